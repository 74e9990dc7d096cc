"""lit_gpt state dicts and lit checkpoint folders: the expected names and shapes, tied embeddings, key cleaning,
the tokenizer files that travel with the weights, and writing a folder atomically (lit_model.pth +
model_config.json + tokenizer files + train_metadata.json + checksums.json)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch

from lit_gpt.config import Config
from lit_gpt.integrity import (
    DiskFullError, check_free_space, disk_full_message, hash_files, is_disk_full, state_nbytes, write_checksums,
)
from lit_gpt.layout import LIT_WEIGHTS, MODEL_CONFIG, TRAIN_METADATA, PathLike
from lit_gpt.model import GPT
from lit_gpt.utils import replace_folder

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# ---- tokenizer files -------------------------------------------------------------------------------
def has_tokenizer(folder: PathLike) -> bool:
    return (Path(folder) / "tokenizer.model").is_file() or (Path(folder) / "tokenizer.json").is_file()


def check_tokenizer_dir(folder: Optional[PathLike]) -> None:
    """Raises FileNotFoundError unless `folder` (a user's --tokenizer_dir; None = not given) holds a tokenizer."""
    if folder is not None and not has_tokenizer(folder):
        raise FileNotFoundError(f"{folder}: no tokenizer.model or tokenizer.json in this folder")


def find_tokenizer_dir(path: PathLike) -> Optional[Path]:
    """The first folder holding tokenizer files among the checkpoint folder, its parent and the training out_dir
    (two levels up from a step folder); None when there is none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent, folder.parent.parent):
        if has_tokenizer(candidate):
            return candidate
    return None


# ---- names, shapes, tying ---------------------------------------------------------------------------
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


def tie_weights(state_dict: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """With tied embeddings, `lm_head.weight` is the same tensor as `embed.weight` (as `GPT.state_dict()` has it);
    returns the state dict, changed in place."""
    if config.tie_embeddings:
        state_dict["lm_head.weight"] = state_dict["embed.weight"]
    return state_dict


def load_weights(model: GPT, state_dict: dict[str, torch.Tensor]) -> GPT:
    """Loads a checked lit state dict into `model` (tied embeddings stay one shared parameter)."""
    if model.config.tie_embeddings:  # to_empty gives the shared weight two separate storages: tie them again
        model.lm_head.weight = model.embed.weight
    model.load_state_dict(tie_weights(state_dict, model.config))
    return model


def clean_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops the prefixes torch.compile ("_orig_mod.") and DDP-style wrappers ("module.") add to parameter names."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("_orig_mod.", "")
        if key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


# ---- writing folders --------------------------------------------------------------------------------
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
    tie_weights(state_dict, config)  # one shared tensor, stored once, as GPT.state_dict() has it
    with atomic_folder(out_dir, overwrite, need=state_nbytes([state_dict])) as tmp:
        torch.save(state_dict, tmp / LIT_WEIGHTS)
        config.save(tmp / MODEL_CONFIG)
        copy_tokenizer_files(tokenizer_dir, tmp)
        if training:
            (tmp / TRAIN_METADATA).write_text(json.dumps(training) + "\n")
        write_checksums(tmp, hash_files(tmp))
    return Path(out_dir)
