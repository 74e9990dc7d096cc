"""What keeps a written checkpoint whole: checksums of every file (written at save, verified at every read) and
disk-space checks (estimated size before a save, one clear line when the disk fills up during one).

Every checkpoint folder this project writes (training step folders, lit folders) carries checksums.json: the size
and hash of each file, written before the folder is renamed into place. The hash is xxh3-128 of the xxh3-128
digests of the file's 64 MiB blocks, hashed in parallel threads (xxhash releases the GIL): one thread hashes
6-19 GB/s from the page cache (sha256 ~0.9, blake2b ~0.5, zlib.crc32 ~2 on the same CPU), so a save costs a few
percent more. docs/training.md has the measurements.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from lit_gpt.layout import (
    CHECKSUMS, DCP_METADATA, LIT_WEIGHTS, SHARDED_STATE, SINGLE_STATE, PathLike,
)
from lit_gpt.utils import atomic_write, first_line

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
        ours = any((folder / n).exists() for n in (LIT_WEIGHTS, SINGLE_STATE, SHARDED_STATE, DCP_METADATA))
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
