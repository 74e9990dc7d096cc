"""Saving and restoring the full state of a training run (lit_gpt.layout says where it goes).

A step folder holds the model under "model", the optimizer, step, tokens_seen, each rank's data loader position and
RNG state: `state.pth` (one device, DDP) or `state/` (FSDP: a sharded torch.distributed.checkpoint folder), and
checksums.json (each file's hash, verified at resume). It is written to `step-XXXXXXXX.tmp` and renamed once
complete, so a crash mid-save leaves the previous checkpoint intact. Periodic saves may run in a background thread
(`--async_save`): training pauses only to copy the state to CPU memory, then goes on while the copy is written.
"""

from __future__ import annotations

import copy as copy_module
import os
import random
import shutil
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from lit_gpt import layout
from lit_gpt.config import Config
from lit_gpt.utils import TrainError, replace_folder


class Checkpointer:
    """One run's checkpoints: where to resume from, whether a checkpoint fits this run, save and load."""

    def __init__(self, fabric, out_dir: Path, strategy_name: str, keep_last_k: Optional[int]) -> None:
        self.fabric, self.out_dir, self.strategy_name = fabric, Path(out_dir), strategy_name
        self.keep_last_k = keep_last_k
        self._pending: Optional[BackgroundJob] = None  # the background save in flight
        self._group = None  # the gloo group of background saves' collectives (made at the first one)

    @property
    def sharded(self) -> bool:
        return self.strategy_name == "fsdp"

    def resume_path(self, resume: Optional[str]) -> Optional[Path]:
        """The step folder `--resume` points at (None: start fresh); refuses to start fresh over an earlier run."""
        checkpoints = self.out_dir / layout.CHECKPOINTS
        if resume is None:
            if layout.latest_checkpoint(self.out_dir) is not None:
                raise TrainError(f"{checkpoints}: holds checkpoints of an earlier run; continue it with "
                                 f"--resume auto, or pick a new --out_dir")
            return None
        if resume == "auto":
            latest = layout.latest_checkpoint(self.out_dir)
            if latest is None:
                self.fabric.print(f"--resume auto: no checkpoint in {checkpoints}, starting fresh")
            return latest
        path = layout.step_folder(resume)
        if not path.is_dir() or not (layout.state_path(path, False).is_file() or layout.is_sharded(path)):
            raise TrainError(f"{resume}: resume checkpoint not found (expected a step folder with "
                             f"{layout.SINGLE_STATE} or {layout.SHARDED_STATE}/)")
        return path

    def check_compatible(self, path: Path, config: Config, optimizer: str = "adamw") -> None:
        """Refuses a checkpoint written for another model shape, strategy or optimizer before any loading starts."""
        try:
            meta = layout.read_step_metadata(path, ("model_config", "world_size", "optimizer_name"))
        except ValueError as e:
            raise TrainError(str(e)) from None
        saved = meta.get("model_config")
        if saved is not None and saved != config.to_dict():
            diff = [f"{k} {saved.get(k)} -> {v}" for k, v in config.to_dict().items() if saved.get(k) != v]
            raise TrainError(f"{path}: checkpoint is for another model shape ({', '.join(diff)}); "
                             f"pass the matching --model_name or a fresh --out_dir")
        if layout.is_sharded(path) != self.sharded:
            kind = "sharded (fsdp)" if layout.is_sharded(path) else "single-file (ddp/single)"
            raise TrainError(f"{path}: checkpoint is {kind} but this run uses strategy {self.strategy_name}; "
                             f"resume with the same strategy")
        saved_optimizer = meta.get("optimizer_name", "adamw")  # absent from checkpoints of older versions
        if saved_optimizer != optimizer:
            raise TrainError(f"{path}: checkpoint holds {saved_optimizer} optimizer state but this run uses "
                             f"--optimizer {optimizer}; resume with the same optimizer")
        saved_world = meta.get("world_size", self.fabric.world_size)
        if saved_world != self.fabric.world_size:  # elastic resume: see Trainer._load_checkpoint
            self.fabric.print(f"{path}: written by {saved_world} processes, resumed on {self.fabric.world_size}: "
                              f"model and optimizer resharded, the data continues where all {saved_world} stopped")

    def save(self, step: int, state: dict[str, Any], config: Config, background: bool = False) -> Path:
        """Writes `state` (its modules and optimizers as their state dicts) as the step folder of `step`: first as
        `<name>.tmp` with checksums.json (each rank hashing the files it wrote), renamed once complete. Too little
        free space, before or during the write, is one TrainError line on every rank, and the partial folder is
        removed. `background`: the state is copied off the device (training waits only for that copy) and written
        by a thread while training goes on; a failure is raised by the next `save` or `wait`, on every rank. A crash
        meanwhile leaves the `.tmp` folder, which no resume reads: the previous checkpoint stays the newest."""
        from lit_gpt.integrity import check_free_space, state_nbytes

        self.wait()  # one save at a time (and an earlier background save's failure surfaces here)
        fabric, rank = self.fabric, self.fabric.global_rank
        final = layout.step_dir(self.out_dir, step)
        tmp = final.with_name(final.name + ".tmp")
        need = state_nbytes([state["model"], state["optimizer"]])  # a sharded save writes every rank's part
        need = sum(self.gather(need)) if self.sharded else need
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        full = self.gather(check_free_space(tmp.parent, need) if rank == 0 else None)[0]
        if full is not None:
            self._remove_partial_save(tmp)
            raise TrainError(f"{full} (checkpoint {final.name} not saved)")
        started = time.perf_counter()
        staged = self._stage(state, copy=background)
        write = partial(self._write, tmp, final, staged, config, need)
        if not background:
            write(group=None)
            fabric.print(f"saved checkpoint {final} ({time.perf_counter() - started:.2f} s)")
            return final
        if self._group is None and torch.distributed.is_initialized():  # keep the writer's collectives off the
            self._group = torch.distributed.new_group(backend="gloo")  # training's group (no NCCL from a thread)
        paused = time.perf_counter() - started

        def write_in_background() -> None:
            write(group=self._group)
            fabric.print(f"saved checkpoint {final} (in the background: training paused {paused:.2f} s to copy "
                         f"the state, the write took {time.perf_counter() - started:.2f} s)")

        self._pending = BackgroundJob(write_in_background)
        return final

    def wait(self) -> None:
        """Returns once no save is in flight; a failed background save raises its error here, on every rank."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.join()
            if pending.error is not None:
                raise pending.error

    def _stage(self, state: dict[str, Any], copy: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tensors, metadata): the modules' and optimizers' state dicts (local shards under FSDP), and the other
        entries, in the layout Fabric writes and reads (so `fabric.load` resumes it). `copy`: every tensor copied
        to CPU memory of its own, so training may change the live ones while a thread writes these."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        from torch.utils._pytree import tree_map_only

        model = next(unwrap(v) for v in state.values() if isinstance(v, torch.nn.Module))
        tensors, meta = {}, {}
        options = StateDictOptions(cpu_offload=not copy)  # a copy goes to CPU anyway, once
        for key, obj in state.items():
            obj = unwrap(obj)
            if isinstance(obj, torch.nn.Module):
                tensors[key] = get_model_state_dict(obj, options=options) if self.sharded else obj.state_dict()
            elif isinstance(obj, torch.optim.Optimizer):
                tensors[key] = get_optimizer_state_dict(model, obj, options=options) if self.sharded \
                    else obj.state_dict()
            else:
                meta[key] = copy_module.deepcopy(obj) if copy else obj
        if copy and (self.sharded or self.fabric.global_rank == 0):  # unsharded: rank 0 alone writes
            tensors = tree_map_only(torch.Tensor, lambda t: t.detach().to("cpu", copy=True), tensors)
        return tensors, meta

    def _write(self, tmp: Path, final: Path, staged: tuple[dict, dict], config: Config, need: int,
               group: Any) -> None:
        """Writes the staged state into `tmp`, hashes, and (rank 0) renames it to `final` once every rank's part is
        complete; collectives on `group` (None: the default one)."""
        from torch.distributed.checkpoint.api import CheckpointException

        from lit_gpt.integrity import hash_files, write_checksums

        rank = self.fabric.global_rank
        error, hashes = None, {}
        try:
            tensors, meta = staged
            path = layout.state_path(tmp, self.sharded)
            if self.sharded:
                import torch.distributed.checkpoint as dcp

                path.mkdir(exist_ok=True)
                dcp.save(tensors, checkpoint_id=path, process_group=group)
                if rank == 0:
                    torch.save(meta, path / layout.SHARDED_META)
            elif rank == 0:
                write_file({**tensors, **meta}, path)
            save_fault_injection()
            if rank == 0:
                config.save(tmp / layout.MODEL_CONFIG)
            hashes = hash_files(tmp, rank, self.fabric.world_size)
        except (Exception, CheckpointException) as e:  # the latter: a sharded save's, a BaseException
            error = e
        results = self.gather((error is not None, hashes), group)
        if any(failed for failed, _ in results):
            self._raise_save_error(error, tmp, need, [r for r, (failed, _) in enumerate(results) if failed], group)
        if rank == 0:
            write_checksums(tmp, {name: entry for _, part in results for name, entry in part.items()})
            replace_folder(tmp, final)  # re-saving a step keeps a complete copy at every moment
            layout.prune_checkpoints(self.out_dir, self.keep_last_k)
        self.barrier(group)

    def _remove_partial_save(self, tmp: Path, group: Any = None) -> None:
        if self.fabric.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier(group)

    def _raise_save_error(self, error: Optional[BaseException], tmp: Path, need: int, failed_ranks: list[int],
                          group: Any) -> None:
        """After a failed save on `failed_ranks`: remove the partial folder, then raise on every rank: one line when
        the disk is full, else the original error where it happened and a one-liner naming that rank elsewhere."""
        from lit_gpt.integrity import disk_full_message, is_disk_full

        self._remove_partial_save(tmp, group)  # the previous checkpoints are untouched
        full = error is not None and is_disk_full(error, tmp.parent, need)
        if any(self.gather(full, group)):
            raise TrainError(f"{disk_full_message(tmp.parent, need)} (checkpoint {tmp.stem} not saved)")
        if error is not None:
            raise error
        raise TrainError(f"saving checkpoint {tmp.stem} failed on rank {failed_ranks[0]} (its error is above)")

    def verify(self, path: Path) -> None:
        """Checks the files against the checksums saved with them, each rank the files it wrote."""
        from lit_gpt.integrity import verify_checksums

        try:
            verify_checksums(path, self.fabric.global_rank, self.fabric.world_size, warn=self.fabric.print)
            error = None
        except ValueError as e:
            error = str(e)
        errors = [e for e in self.gather(error) if e is not None]
        if errors:
            raise TrainError(errors[0])

    def load(self, path: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Loads the step folder `path` into `state` (modules and optimizers in place, other entries replaced)."""
        self.fabric.load(layout.state_path(path, self.sharded), state, strict=False)
        return state

    def gather(self, obj: Any, group: Any = None) -> list[Any]:
        """Every rank's `obj`, in rank order (rank 0 writes them all into the checkpoint metadata)."""
        if self.fabric.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(out, obj, group=group)
        return out

    def barrier(self, group: Any = None) -> None:
        if self.fabric.world_size == 1:
            return
        if group is not None:
            torch.distributed.barrier(group=group)
        else:
            self.fabric.barrier()


class BackgroundJob(threading.Thread):
    """Runs `job` in a thread that keeps its exception for whoever joins it. A daemon: a process ending (a crash)
    does not wait for a half-written checkpoint, which stays a `.tmp` folder."""

    def __init__(self, job: Callable[[], None]) -> None:
        super().__init__(name="checkpoint-writer", daemon=True)
        self.job, self.error = job, None
        self.start()

    def run(self) -> None:
        try:
            self.job()
        except BaseException as e:  # noqa: B036 - raised again by Checkpointer.wait
            self.error = e


def unwrap(obj: Any) -> Any:
    """The module or optimizer inside Fabric's wrapper (what its state dict is taken from), else `obj` itself."""
    from lightning.fabric.wrappers import _FabricModule, _FabricOptimizer

    if isinstance(obj, _FabricModule):
        return obj.module
    return obj.optimizer if isinstance(obj, _FabricOptimizer) else obj


def write_file(obj: Any, path: Path) -> None:
    """A one-file checkpoint (one device, DDP: rank 0's)."""
    torch.save(obj, path)


def save_fault_injection() -> None:
    """Test hook in the writer, after the state files are written and before they are complete (hashed, renamed):
    LIT_GPT_SAVE_DELAY_S=s holds the write there s seconds, a slow disk, so that a test can kill the run while a
    background save is in flight."""
    if os.environ.get("LIT_GPT_SAVE_DELAY_S"):
        time.sleep(float(os.environ["LIT_GPT_SAVE_DELAY_S"]))


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from (torch CPU and CUDA, numpy, python); numpy's key as a list so
    the checkpoint loads with weights_only."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:  # absent from checkpoints of older versions
        numpy_state = {**state["numpy"], "state": {**state["numpy"]["state"]}}
        numpy_state["state"]["key"] = np.array(numpy_state["state"]["key"], dtype=np.uint32)
        np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
