"""Reading model weights from every checkpoint layout this project writes, and the lit checkpoint folder.

Layouts `load_model_state` accepts (all give a plain `GPT.state_dict()`):

- a lit checkpoint folder: `lit_model.pth` + `model_config.json` + tokenizer files (the export format);
- a `.pth`/`.pt`/`.bin` file holding a state dict, or a training state dict with the weights under "model";
- a training step folder `step-00001000/` holding `state.pth` (one file) or `state/` (a sharded
  torch.distributed.checkpoint folder as Fabric's ModelParallelStrategy writes it), or that DCP folder itself;
- a training `out_dir` (or its `checkpoints/` folder): the latest `step-*` inside;
- a Hugging Face Llama folder (config.json + safetensors or pytorch_model.bin), converted on the fly.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import re
import shutil
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import torch

from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.model_card import TRAIN_METADATA, read_training_metadata
from lit_gpt.utils import atomic_write, first_line, replace_folder

PathLike = Union[str, Path]
LIT_WEIGHTS = "lit_model.pth"
CONFIG_FILE = "model_config.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CHECKSUMS = "checksums.json"
_STEP_DIR = re.compile(r"step-(\d+)$")


# ---- locating things ------------------------------------------------------------------------------
def resolve_checkpoint(path: PathLike) -> Path:
    """The concrete checkpoint a user path points at: a training out_dir (or its checkpoints/ folder) resolves to
    its latest step folder; anything else is returned as is. Raises FileNotFoundError for a missing path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.is_dir() and not _is_checkpoint_dir(path):
        search = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        steps = sorted((int(m.group(1)), p) for p in search.iterdir()
                       if p.is_dir() and (m := _STEP_DIR.match(p.name)) and _is_checkpoint_dir(p))
        if not steps:
            raise FileNotFoundError(f"{path}: no checkpoint in this folder (expected {LIT_WEIGHTS}, state.pth, state/, "
                                    "a Hugging Face model or step-* folders)")
        return steps[-1][1]
    return path


def _is_checkpoint_dir(path: Path) -> bool:
    return (any((path / name).exists() for name in (LIT_WEIGHTS, "state.pth", "state", ".metadata"))
            or is_hf_folder(path))


def is_hf_folder(path: PathLike) -> bool:
    """A Hugging Face model folder: config.json and safetensors or pytorch_model*.bin weights."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")))


def has_tokenizer(folder: PathLike) -> bool:
    return (Path(folder) / "tokenizer.model").is_file() or (Path(folder) / "tokenizer.json").is_file()


def check_tokenizer_dir(folder: Optional[PathLike]) -> None:
    """Raises FileNotFoundError unless `folder` (a user's --tokenizer_dir; None = not given) holds a tokenizer."""
    if folder is not None and not has_tokenizer(folder):
        raise FileNotFoundError(f"{folder}: no tokenizer.model or tokenizer.json in this folder")


def find_config(path: PathLike) -> Config:
    """The model Config of a checkpoint: `model_config.json` in its folder or the parent folder (for a file, a DCP
    folder or a step folder), or a Hugging Face config.json."""
    path = resolve_checkpoint(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent):
        if (candidate / CONFIG_FILE).is_file():
            return Config.from_file(candidate / CONFIG_FILE)
    if is_hf_folder(folder):
        return Config.from_hf(folder)
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE} next to this checkpoint (looked in {folder} and {folder.parent})")


def find_tokenizer_dir(path: PathLike) -> Optional[Path]:
    """The first folder holding tokenizer files among the checkpoint folder, its parent and the training out_dir
    (two levels up from a step folder); None when there is none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent, folder.parent.parent):
        if has_tokenizer(candidate):
            return candidate
    return None


# ---- reading weights -----------------------------------------------------------------------------
def load_model_state(path: PathLike) -> dict[str, torch.Tensor]:
    """The GPT state dict (CPU tensors) stored at `path`, whichever layout it is (see the module docstring). The
    files' checksums are verified first (ValueError naming a damaged file)."""
    path = resolve_checkpoint(path)
    verify_checksums(path)
    return _read_model_state(path)


def _read_model_state(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        if (path / LIT_WEIGHTS).is_file():
            return _read_model_state(path / LIT_WEIGHTS)
        if (path / "state.pth").is_file():
            return _read_model_state(path / "state.pth")
        if (path / "state" / ".metadata").is_file():
            return _load_dcp_model(path / "state")
        if (path / ".metadata").is_file():
            return _load_dcp_model(path)
        if is_hf_folder(path):
            from lit_gpt.convert import load_hf_folder

            return load_hf_folder(path)[1]
        raise FileNotFoundError(f"{path}: no model weights in this folder")
    if path.suffix == ".safetensors":
        from lit_gpt.convert import read_safetensors

        return _clean_keys(read_safetensors(path))
    obj = _torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a model state dict (expected tensors, or a dict with a 'model' state dict)")
    return _clean_keys(obj)


def _torch_load(path: Path):
    try:  # mmap: a multi-GB checkpoint is paged in as tensors are used, not read up front
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) format, or damaged: the plain load says which
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files, pickle errors, objects weights_only refuses
        raise ValueError(f"{path}: corrupt, truncated or not a torch checkpoint ({first_line(e)})") from None


def _load_dcp_model(path: Path) -> dict[str, torch.Tensor]:
    """Consolidates the "model" entry of a sharded torch.distributed.checkpoint folder on the CPU, in this process
    (no process group): every shard file is read and the full tensors are rebuilt."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    try:  # read .metadata first: on failure DCP would log tracebacks while trying per-rank metadata files
        FileSystemReader(str(path)).read_metadata()
    except Exception as e:
        raise ValueError(f"{path}: unreadable distributed checkpoint, .metadata is corrupt ({first_line(e)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
            state = _load_state_dict_from_keys({"model"}, checkpoint_id=str(path))
    except CheckpointException as e:  # a BaseException holding each rank's (exception, traceback)
        causes = [err[0] if isinstance(err, tuple) else err for err in e.failures.values()]
        reason = first_line(causes[0]) if causes else first_line(e)
        raise ValueError(f"{path}: unreadable distributed checkpoint ({reason})") from None
    except Exception as e:
        raise ValueError(f"{path}: unreadable distributed checkpoint ({first_line(e)})") from None
    model = state.get("model")
    if not model:
        raise ValueError(f"{path}: distributed checkpoint has no 'model' entry")
    return _clean_keys(model)


def _clean_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops the prefixes torch.compile ("_orig_mod.") and DDP-style wrappers ("module.") add to parameter names."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("_orig_mod.", "")
        if key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


# ---- checking weights against a config -----------------------------------------------------------
def lit_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in `GPT(config).state_dict()`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = GPT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_shapes(state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], config: Config,
                 source: PathLike, optional: tuple[str, ...] = ()) -> None:
    """Raises ValueError (one line naming `source`, the config and the first offending tensor) unless the state dict
    has exactly the expected names and shapes; names in `optional` may be missing (e.g. a tied lm_head)."""
    prefix = f"{source}: weights do not match config {config.name!r}"
    for name, shape in expected.items():
        if name not in state_dict:
            if name in optional:
                continue
            missing = [n for n in expected if n not in state_dict and n not in optional]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(f"{prefix}: {name} is missing{more}")
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise ValueError(f"{prefix}: {name} has shape {got}, config expects {shape}")
    unexpected = [n for n in state_dict if n not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"{prefix}: unexpected tensor {unexpected[0]}{more}")


def check_state_dict(state_dict: dict[str, torch.Tensor], config: Config, source: PathLike) -> None:
    """`check_shapes` against `GPT(config)`; a tied model's lm_head.weight may be absent."""
    optional = ("lm_head.weight",) if config.tie_embeddings else ()
    check_shapes(state_dict, lit_shapes(config), config, source, optional)


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
               config: Optional[Config] = None) -> GPT:
    """A GPT in eval mode with the weights at `path` (any layout `load_model_state` reads), on `device`, cast to
    `dtype` (default: the stored dtype). The weights are checked against the config first."""
    path = resolve_checkpoint(path)
    config = config or find_config(path)
    state_dict = load_model_state(path)
    check_state_dict(state_dict, config, path)
    if config.tie_embeddings:
        state_dict["lm_head.weight"] = state_dict["embed.weight"]
    dtype = dtype or state_dict["embed.weight"].dtype
    with torch.device("meta"):  # skip the random init: every tensor is overwritten below
        model = GPT(config)
    model = model.to_empty(device=device).to(dtype)
    if config.tie_embeddings:  # to_empty gives the shared weight two separate storages: tie them again
        model.lm_head.weight = model.embed.weight
    model.load_state_dict(state_dict)
    return model.eval()


# ---- writing -------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_folder(out_dir: PathLike, overwrite: bool = False, need: int = 0) -> Iterator[Path]:
    """Yields a temporary sibling folder `<out_dir>.tmp-<pid>` to fill; on success it replaces `out_dir` with one
    rename, on any error it is deleted, so `out_dir` is never left half-written. An existing non-empty `out_dir`
    is refused (FileExistsError) unless `overwrite`. `need`: the bytes about to be written, checked against the free
    space first; running out of space is reported as one OSError line saying so."""
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    full = check_free_space(out_dir.parent, need, out_dir.name)
    if full:
        raise DiskFullError(full)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_full(e, out_dir.parent, need):
            raise DiskFullError(disk_full_message(out_dir.parent, need, out_dir.name)) from None
        raise


def check_output_folder(out_dir: PathLike, overwrite: bool = False) -> None:
    """Raises FileExistsError if `out_dir` is a file, or a non-empty folder and not `overwrite` (scripts call this
    before reading a large checkpoint, so the refusal comes first)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: output folder exists and is not empty (pass --overwrite to replace it)")


def copy_tokenizer_files(src_dir: Optional[PathLike], dst_dir: PathLike) -> list[str]:
    """Copies the tokenizer files present in `src_dir` into `dst_dir`; returns their names."""
    if src_dir is None:
        return []
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src_dir) / name).is_file():
            shutil.copyfile(Path(src_dir) / name, Path(dst_dir) / name)
            copied.append(name)
    return copied


def save_lit_folder(state_dict: dict[str, torch.Tensor], config: Config, out_dir: PathLike,
                    tokenizer_dir: Optional[PathLike] = None, overwrite: bool = False,
                    dtype: Optional[torch.dtype] = None, training: Optional[dict] = None) -> Path:
    """Writes a lit checkpoint folder (lit_model.pth, model_config.json, tokenizer files, and `training` progress
    as train_metadata.json for the model card) atomically. The caller checks the weights (`check_state_dict`)."""
    state_dict = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
                  for k, v in state_dict.items()}
    if config.tie_embeddings:  # one shared tensor, stored once, as GPT.state_dict() has it
        state_dict["lm_head.weight"] = state_dict["embed.weight"]
    with atomic_folder(out_dir, overwrite, need=state_nbytes([state_dict])) as tmp:
        torch.save(state_dict, tmp / LIT_WEIGHTS)
        config.save(tmp / CONFIG_FILE)
        copy_tokenizer_files(tokenizer_dir, tmp)
        if training:
            (tmp / TRAIN_METADATA).write_text(json.dumps(training) + "\n")
        write_checksums(tmp, hash_files(tmp))
    return Path(out_dir)


def consolidate(src: PathLike, dst_folder: PathLike, overwrite: bool = False,
                tokenizer_dir: Optional[PathLike] = None) -> Path:
    """Turns any training checkpoint (state.pth, sharded state/, step folder, out_dir) into a lit checkpoint
    folder at `dst_folder`: consolidated weights, the model config and the tokenizer files found near `src`."""
    src = resolve_checkpoint(src)
    config = find_config(src)
    state_dict = load_model_state(src)
    check_state_dict(state_dict, config, src)
    return save_lit_folder(state_dict, config, dst_folder, tokenizer_dir or find_tokenizer_dir(src), overwrite,
                           training=read_training_metadata(src))


# ---- checksums -----------------------------------------------------------------------------------
# Every checkpoint folder this project writes (training step folders, lit folders) carries checksums.json: the size
# and hash of each file, written before the folder is renamed into place. The hash is xxh3-128 of the xxh3-128
# digests of the file's 64 MiB blocks, hashed in parallel threads (xxhash releases the GIL): one thread hashes
# 6-19 GB/s from the page cache (sha256 ~0.9, blake2b ~0.5, zlib.crc32 ~2 on the same CPU), so a save costs a few
# percent more. docs/training.md has the measurements.
HASH = "xxh3_128/64MiB-blocks"
_BLOCK = 64 * 2**20


def file_hash(path: PathLike) -> str:
    import xxhash

    with open(path, "rb") as f:
        if not os.fstat(f.fileno()).st_size:  # an empty file cannot be mapped
            return xxhash.xxh3_128(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m, memoryview(m) as view:  # no copies
            def block(start: int) -> bytes:
                h = xxhash.xxh3_128()
                h.update(view[start:start + _BLOCK])
                return h.digest()

            with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
                digests = b"".join(pool.map(block, range(0, len(view), _BLOCK)))
    return xxhash.xxh3_128(digests).hexdigest()


def _shard_owner(name: str, world_size: int) -> int:
    """The rank that wrote (and hashes, and verifies) a file of a checkpoint folder: torch.distributed.checkpoint
    names rank r's shards `__r_<i>.distcp`; every other file is rank 0's."""
    m = re.match(r"__(\d+)_\d+\.distcp$", Path(name).name)
    return int(m.group(1)) if m and int(m.group(1)) < world_size else 0


def hash_files(folder: PathLike, rank: int = 0, world_size: int = 1) -> dict[str, dict]:
    """{relative path: {"size", "hash"}} of the files under `folder` that `rank` of `world_size` owns (all of them in
    one process): in a sharded save each rank hashes its own shards, in parallel."""
    folder = Path(folder)
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name != CHECKSUMS and _shard_owner(name, world_size) == rank:
            out[name] = {"size": path.stat().st_size, "hash": file_hash(path)}
    return out


def write_checksums(folder: PathLike, files: dict[str, dict]) -> None:
    with atomic_write(Path(folder) / CHECKSUMS) as f:
        json.dump({"algorithm": HASH, "files": dict(sorted(files.items()))}, f, indent=1)
        f.write("\n")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def verify_checksums(path: PathLike, rank: int = 0, world_size: int = 1,
                     warn: Callable[[str], None] = _warn) -> None:
    """Checks the files of the checkpoint at `path` (a step or lit folder, its state/ folder, state.pth or
    lit_model.pth) against the checksums.json of its folder; `rank` of `world_size` checks the files it owns.
    Raises ValueError naming the first damaged or missing file. A checkpoint of this project written before checksums
    existed is read with one warning; other files (a Hugging Face folder, a bare .pth) are not checked."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / CHECKSUMS).is_file() and (folder.parent / CHECKSUMS).is_file():
        folder = folder.parent  # state/ or a file inside a step folder
    manifest = folder / CHECKSUMS
    if not manifest.is_file():
        ours = any((folder / n).exists() for n in (LIT_WEIGHTS, "state.pth", "state", ".metadata"))
        if ours and rank == 0:
            warn(f"{folder}: no {CHECKSUMS} (written before checkpoints carried checksums): its bytes are not "
                 f"verified")
        return
    try:
        saved = json.loads(manifest.read_text())
        algorithm, files = saved["algorithm"], saved["files"]
    except Exception as e:
        raise ValueError(f"{manifest}: unreadable checksum file ({first_line(e)})") from None
    if algorithm != HASH:
        raise ValueError(f"{manifest}: unknown checksum algorithm {algorithm!r} (this version knows {HASH})")
    within = "" if path == folder else path.relative_to(folder).as_posix()
    for name, entry in files.items():
        if within and name != within and not name.startswith(within + "/"):
            continue
        if _shard_owner(name, world_size) != rank:
            continue
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{file}: missing from the checkpoint ({CHECKSUMS} lists it)")
        size = file.stat().st_size
        if size != entry["size"]:
            raise ValueError(f"{file}: damaged checkpoint file: {size} bytes, {entry['size']} when saved")
        if file_hash(file) != entry["hash"]:
            raise ValueError(f"{file}: damaged checkpoint file: its checksum differs from the one saved in {CHECKSUMS}")


# ---- disk space ----------------------------------------------------------------------------------
class DiskFullError(OSError):
    """No space left for a checkpoint; the message is the one line to show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def state_nbytes(objects: Iterable) -> int:
    """Bytes of the tensors in these state dicts, modules' state dicts and optimizers' states on this process (the
    local shard of a DTensor): what a checkpoint of them writes, give or take the metadata."""
    tensors = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, dict):
            tensors += [v for v in obj.values() if isinstance(v, torch.Tensor)]
        else:  # an optimizer
            tensors += [v for s in obj.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    seen, total = set(), 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:  # a tied weight is stored once
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e7 else f"{n_bytes / 1e6:.2f} MB"


def disk_full_message(folder: PathLike, need: int, what: str = "a checkpoint") -> str:
    free = shutil.disk_usage(folder).free
    return f"{folder}: disk full: {what} needs about {_gb(need)}, {_gb(free)} free there"


def check_free_space(folder: PathLike, need: int, what: str = "a checkpoint") -> Optional[str]:
    """The disk-full message when `folder`'s filesystem has less than `need` bytes free, else None."""
    return disk_full_message(folder, need, what) if shutil.disk_usage(folder).free < need else None


def is_disk_full(error: BaseException, folder: PathLike, need: int) -> bool:
    """Whether a failed write into `folder` ran out of space: an ENOSPC/EDQUOT OSError anywhere in the exception's
    chain (or inside a torch.distributed.checkpoint failure), or less free space than needed. The free space test
    catches the writers that lose the errno (torch's zip writer says 'unexpected pos', 'file write failed')."""
    pending, seen = [error], set()
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        pending += [e.__cause__, e.__context__]
        for failure in getattr(e, "failures", {}).values():  # CheckpointException: {rank: exception or (exc, tb)}
            pending.append(failure[0] if isinstance(failure, tuple) else failure)
    return shutil.disk_usage(folder).free < need
