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
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.model_card import TRAIN_METADATA, read_training_metadata
from lit_gpt.utils import first_line, replace_folder

PathLike = Union[str, Path]
LIT_WEIGHTS = "lit_model.pth"
CONFIG_FILE = "model_config.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
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
    """The GPT state dict (CPU tensors) stored at `path`, whichever layout it is (see the module docstring)."""
    path = resolve_checkpoint(path)
    if path.is_dir():
        if (path / LIT_WEIGHTS).is_file():
            return load_model_state(path / LIT_WEIGHTS)
        if (path / "state.pth").is_file():
            return load_model_state(path / "state.pth")
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
def atomic_folder(out_dir: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling folder `<out_dir>.tmp-<pid>` to fill; on success it replaces `out_dir` with one
    rename, on any error it is deleted, so `out_dir` is never left half-written. An existing non-empty `out_dir`
    is refused (FileExistsError) unless `overwrite`."""
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
    with atomic_folder(out_dir, overwrite) as tmp:
        torch.save(state_dict, tmp / LIT_WEIGHTS)
        config.save(tmp / CONFIG_FILE)
        copy_tokenizer_files(tokenizer_dir, tmp)
        if training:
            (tmp / TRAIN_METADATA).write_text(json.dumps(training) + "\n")
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
