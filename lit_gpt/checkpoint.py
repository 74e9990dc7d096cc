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

import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from lit_gpt import layout
from lit_gpt.config import Config
from lit_gpt.convert import is_hf_folder, load_hf_folder, read_safetensors
from lit_gpt.integrity import verify_checksums
from lit_gpt.layout import LIT_WEIGHTS, MODEL_CONFIG, PathLike, read_training_metadata
from lit_gpt.model import GPT
from lit_gpt.utils import first_line
from lit_gpt.weights import (
    check_state_dict, clean_keys, find_tokenizer_dir, load_weights, save_lit_folder,
)


# ---- locating things ------------------------------------------------------------------------------
def resolve_checkpoint(path: PathLike) -> Path:
    """The concrete checkpoint a user path points at: a training out_dir (or its checkpoints/ folder) resolves to
    its latest step folder; anything else is returned as is. Raises FileNotFoundError for a missing path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.is_dir() and not _is_checkpoint_dir(path):
        steps = [p for p in layout.step_dirs(path) if _is_checkpoint_dir(p)]
        if not steps:
            raise FileNotFoundError(f"{path}: no checkpoint in this folder (expected {LIT_WEIGHTS}, "
                                    f"{layout.SINGLE_STATE}, {layout.SHARDED_STATE}/, a Hugging Face model or step-* "
                                    "folders)")
        return steps[-1]
    return path


def _is_checkpoint_dir(path: Path) -> bool:
    names = (LIT_WEIGHTS, layout.SINGLE_STATE, layout.SHARDED_STATE, layout.DCP_METADATA)
    return any((path / name).exists() for name in names) or is_hf_folder(path)


def find_config(path: PathLike) -> Config:
    """The model Config of a checkpoint: `model_config.json` in its folder or the parent folder (for a file, a DCP
    folder or a step folder), or a Hugging Face config.json."""
    path = resolve_checkpoint(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent):
        if (candidate / MODEL_CONFIG).is_file():
            return Config.from_file(candidate / MODEL_CONFIG)
    if is_hf_folder(folder):
        return Config.from_hf(folder)
    raise FileNotFoundError(f"{path}: no {MODEL_CONFIG} next to this checkpoint (looked in {folder} and {folder.parent})")


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
        if (path / layout.SINGLE_STATE).is_file():
            return _read_model_state(path / layout.SINGLE_STATE)
        if (path / layout.SHARDED_STATE / layout.DCP_METADATA).is_file():
            return _load_dcp_model(path / layout.SHARDED_STATE)
        if (path / layout.DCP_METADATA).is_file():
            return _load_dcp_model(path)
        if is_hf_folder(path):
            return load_hf_folder(path)[1]
        raise FileNotFoundError(f"{path}: no model weights in this folder")
    if path.suffix == ".safetensors":
        return clean_keys(read_safetensors(path))
    obj = _torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a model state dict (expected tensors, or a dict with a 'model' state dict)")
    return clean_keys(obj)


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
    return clean_keys(model)




def load_model(path: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
               config: Optional[Config] = None) -> GPT:
    """A GPT in eval mode with the weights at `path` (any layout `load_model_state` reads), on `device`, cast to
    `dtype` (default: the stored dtype). The weights are checked against the config first."""
    path = resolve_checkpoint(path)
    config = config or find_config(path)
    state_dict = load_model_state(path)
    check_state_dict(state_dict, config, path)
    dtype = dtype or state_dict["embed.weight"].dtype
    with torch.device("meta"):  # skip the random init: every tensor is overwritten below
        model = GPT(config)
    return load_weights(model.to_empty(device=device).to(dtype), state_dict).eval()


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
