"""What every process of a run needs from its launcher, whichever it is (`fabric run`, `torchrun`, plain `python`
where Fabric starts the other ranks, `srun`): know the launcher's variables and whether it started this process,
hold the output folder against a second run, and report an expected error as one line once rather than once per
rank. (Dying with the launcher: lit_gpt.utils.exit_with_parent.)"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Optional

from lit_gpt.layout import LOCK_FILE
from lit_gpt.utils import TrainError

# Set by torchrun / `fabric run` / Fabric for each rank; a child that must run as a single process drops them.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
                "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def started_by_launcher() -> bool:
    """True in a rank whose parent process is its launcher: a torchrun / `fabric run` worker, or a rank > 0 that
    Fabric started from rank 0. Not for a process the user started (its parent is a shell; `nohup` must keep it)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("LOCAL_RANK", "0") or 0) > 0


def lock_folder(folder: Path) -> IO:
    """Holds an exclusive lock on `folder/.lock` for as long as the returned file stays open (flock: the kernel drops
    it when the process dies, so a crashed run's lock is taken over safely). Raises TrainError naming the holder
    (pid, host, start time) when another process holds it. Filesystems without flock support get no lock."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / LOCK_FILE, "a+")
    except OSError as e:
        raise TrainError(f"{folder}: cannot write there ({e.strerror or e})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise TrainError(f"{folder}: in use by another run ({holder}); wait for it to end or pick another folder")
    except OSError:  # e.g. a Lustre mount without -o flock: run unguarded rather than not at all
        return f
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


def first_to_report(message: str) -> bool:
    """Whether this process is the one to print the error `message`, so that the run prints it once, not once per
    rank. With the process group up, the first rank to claim the message in the job's key-value store prints it
    (each distinct message once); before it, every rank checked the same arguments and the first process of each
    node prints."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            store = dist.distributed_c10d._get_default_store()
            return store.add(f"lit_gpt/error/{hashlib.sha1(message.encode()).hexdigest()}", 1) == 1
        except Exception:  # the store lives in a process that may be gone already: rather twice than never
            return True
    return os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")) in ("0", "")


def requeue_wanted(option: "bool | None") -> bool:
    """--requeue_on_timeout: true, false, or None (auto): requeue when running as a SLURM job."""
    return "SLURM_JOB_ID" in os.environ if option is None else option


def requeue_problem() -> Optional[str]:
    """Why `requeue_slurm_job` would fail at the time limit, asked of `scontrol show job` at start-up, so the run's
    owner learns it now rather than hours later: None when the job is requeueable (or SLURM does not say)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return "SLURM_JOB_ID is not set (not a SLURM job)"
    try:
        proc = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`scontrol show job {job}` failed: {e}"
    if re.search(r"\bRequeue=0\b", proc.stdout):
        return f"SLURM job {job} is not requeueable (Requeue=0: submitted without --requeue)"
    return None


def requeue_slurm_job() -> str:
    """Puts this SLURM job back in the queue (`scontrol requeue $SLURM_JOB_ID`; SLURM ends the running job), so that
    it starts again and resumes from the checkpoint just saved. Returns the line to print; a failure (a job
    submitted without --requeue, no scontrol) is that line, not an error: the checkpoint is saved either way."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return "not requeued: SLURM_JOB_ID is not set (not a SLURM job); continue with --resume auto"
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120)
        problem = None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip() or f"status {proc.returncode}"
    except (OSError, subprocess.TimeoutExpired) as e:
        problem = str(e)
    if problem is not None:
        return (f"could not requeue SLURM job {job} ({problem}); submit with --requeue, or resubmit it: it continues "
                f"with --resume auto")
    return f"requeued SLURM job {job}: it resumes from this checkpoint when it starts again"
