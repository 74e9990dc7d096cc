"""Tokenize a corpus (JSONL, compressed or not, or parquet) into packed chunks while it downloads; resumable and
deterministic.

Pipeline: fetcher threads get whole files in order (bounded prefetch; a remote file is downloaded to disk and
renamed once complete) and cut them into batches (`lit_gpt.data.formats`: ~1 MB of lines of a decompressed text
file, one row group of a parquet file); a pool of tokenizer processes reads each batch's rows and tokenizes the
documents; the main thread takes the results back in submission order and appends them to one
`PackedDatasetWriter`. So the token stream is the same whatever the number of workers and whatever the format the
same documents come in, and local or streamed input gives identical files.

Resume: the manifest `{destination}/{prefix}.manifest.json` is saved before the first chunk, and after the last
batch of each source file the writer commits (the partial chunk is written under its counter) and the manifest
records the file with the writer's position. Within a long file (a ~2 GB parquet file takes minutes to tokenize)
it also commits every `commit_every` seconds, recording how many of the file's batches are written. A rerun skips
the recorded files and batches, reloads the partial chunk and deletes chunks written after the commit: every
document ends up on disk exactly once, however and whenever the previous run ended.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from lit_gpt.data.formats import DataError, RowReader, fetch_file, read_batch
from lit_gpt.data.packed import PackedDatasetWriter, chunk_name, dtype_for_vocab
from lit_gpt.utils import atomic_write, exit_with_parent, fsync

MAX_EXAMPLES = 5


@dataclass
class Stats:
    docs: Counter = field(default_factory=Counter)  # per set
    tokens: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # per set
    filtered: Counter = field(default_factory=Counter)  # per filter, the first one a row fails
    malformed: Counter = field(default_factory=Counter)  # per reason
    examples: dict = field(default_factory=dict)  # reason -> a few "file:line" locations
    damaged_files: dict = field(default_factory=dict)  # name -> what is wrong: data lost, the run fails
    empty_files: list = field(default_factory=list)
    files: int = 0
    bytes_in: int = 0

    def add_bad(self, reason: str, where: str, n: int = 1) -> None:
        self.malformed[reason] += n
        where_list = self.examples.setdefault(reason, [])
        if len(where_list) < MAX_EXAMPLES:
            where_list.append(where)

    def merge(self, other: "Stats") -> None:
        self.docs.update(other.docs)
        self.tokens.update(other.tokens)
        self.skipped.update(other.skipped)
        self.filtered.update(other.filtered)
        self.damaged_files.update(other.damaged_files)
        for reason, n in other.malformed.items():
            self.malformed[reason] += n
            room = MAX_EXAMPLES - len(self.examples.setdefault(reason, []))
            self.examples[reason] += other.examples.get(reason, [])[:room]

    def to_json(self) -> dict:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "Stats":
        counters = {k: Counter(d.get(k, {})) for k in ("docs", "tokens", "skipped", "filtered", "malformed")}
        return cls(**counters, examples=d.get("examples", {}), damaged_files=d.get("damaged_files", {}),
                   empty_files=d.get("empty_files", []), files=d.get("files", 0), bytes_in=d.get("bytes_in", 0))


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer processes

_worker: dict = {}


def init_worker(tokenizer, reader: RowReader, parent_pid: int) -> None:
    """`tokenizer`: the parent's loaded `Tokenizer` (inherited by a forked process, so not loaded N times again: a
    32k tokenizer.json takes ~80 ms) or, started by spawn, its folder."""
    from lit_gpt.tokenizer import Tokenizer

    exit_with_parent(parent_pid)  # blocked on the task pipe, a worker would otherwise outlive a killed parent forever
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops the pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process for HF tokenizers too
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer(tokenizer)
    if tokenizer.eos_id is None:
        raise DataError(f"{tokenizer.path}: tokenizer has no EOS token")
    _worker.update(tokenizer=tokenizer, reader=reader, dtype=dtype_for_vocab(tokenizer.vocab_size))


def encode_one_core(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens, on one core (the raw tokenizer's work in a tokenizer process)."""
    if tokenizer.backend == "sentencepiece":
        return tokenizer.processor.encode(texts, num_threads=1)
    return tokenizer.encode_batch(texts)  # one core: the process sets TOKENIZERS_PARALLELISM=false


def pack_with_eos(ids: list[list[int]], eos_id: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(all documents' ids, each followed by EOS as TinyLlama did, in one array; each one's length with its EOS).
    Filled by slices, without copying each list to append EOS: ~20-28 ns a token, 2% of a 32k tokenizer's time
    (reading the Python ints the tokenizer returns is the floor)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    ends = np.cumsum(lengths)
    tokens = np.empty(int(lengths.sum()), dtype=dtype)
    for start, doc in zip((ends - lengths).tolist(), ids):
        tokens[start: start + len(doc)] = doc
    tokens[ends - 1] = eos_id
    return tokens, lengths


def tokenize_batch(batch: tuple) -> tuple[np.ndarray, np.ndarray, list, Stats]:
    """(all tokens, tokens per document, set per document, stats of the bad/skipped rows) of one batch."""
    stats = Stats()
    texts, sets = read_batch(batch, _worker["reader"], stats)
    tokenizer = _worker["tokenizer"]
    tokens, lengths = pack_with_eos(encode_one_core(tokenizer, texts), tokenizer.eos_id, _worker["dtype"])
    return tokens, lengths, sets, stats


# ----------------------------------------------------------------------------------------------------------------
# Main process


def file_sha256(path: Union[str, Path]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Manifest:
    """The record of finished source files and the writer position after the last one, replaced atomically."""

    def __init__(self, path: Path, options: dict) -> None:
        self.path, self.options = path, options
        self.files: list[str] = []
        self.partial: Optional[dict] = None  # {"name", "batches"}: the file in flight at the last commit
        self.position = (0, 0)
        self.stats = Stats()
        self.complete = False

    def load(self) -> bool:
        if not self.path.exists():
            return False
        try:
            d = json.loads(self.path.read_text())
        except ValueError:
            raise DataError(f"{self.path}: unreadable manifest; delete the destination's {self.path.stem}* files to start over") from None
        if not d["files"] and not d.get("partial"):  # a run that recorded nothing binds nothing: start afresh
            return False
        for key, value in self.options.items():
            if d["options"].get(key) != value:
                raise DataError(f"{self.path}: previous run used {key}={d['options'].get(key)!r}, this one "
                                f"{value!r}; use the same options or a fresh --destination")
        self.files, self.position, self.partial = d["files"], tuple(d["position"]), d.get("partial")
        self.stats, self.complete = Stats.from_json(d["stats"]), d["complete"]
        return True

    def save(self) -> None:
        d = {"options": self.options, "files": self.files, "partial": self.partial, "position": list(self.position),
             "stats": self.stats.to_json(), "complete": self.complete}
        with atomic_write(self.path) as f:
            json.dump(d, f, indent=1)
        fsync(self.path.parent)


class Progress:
    """One self-updating line on a terminal, a plain line every `every` seconds otherwise."""

    def __init__(self, total_files: int, every: float = 10.0, stream=sys.stderr) -> None:
        self.total, self.every, self.stream = total_files, every, stream
        self.tty = stream.isatty()
        self.start = self.last = time.perf_counter()
        self.files = self.docs = self.tokens = self.bytes = 0

    def update(self, force: bool = False, **increments) -> None:
        for key, value in increments.items():
            setattr(self, key, getattr(self, key) + value)
        now = time.perf_counter()
        if not force and now - self.last < (0.5 if self.tty else self.every):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        line = (f"files {self.files}/{self.total} | docs {self.docs:,} | tokens {self.tokens:,} | "
                f"{self.tokens / elapsed:,.0f} tok/s | {self.bytes / elapsed / 1e6:.1f} MB/s | {elapsed:.0f}s")
        print(f"\r{line}\x1b[K" if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def close(self) -> None:
        self.update(force=True)
        if self.tty:
            print(file=self.stream)


def prepare(source, include: Union[str, Sequence[str]], tokenizer_dir: Union[str, Path],
            destination: Union[str, Path], prefix: str, exclude: Sequence[str] = (), reader: RowReader = RowReader(),
            chunk_size: int = 2049 * 1024, max_files: Optional[int] = None, max_tokens: Optional[int] = None,
            num_workers: Optional[int] = None, download_workers: int = 4, progress_every: float = 10.0,
            commit_every: float = 60.0, log=functools.partial(print, flush=True)) -> Stats:
    """Tokenizes the files of `source` (a LocalSource/HttpSource/HuggingFaceSource) that the `include` globs
    select and no `exclude` glob does, in natural order, into `{destination}/{prefix}_*.bin` chunks; `reader` says
    which field holds the text and which rows to keep; `commit_every` seconds bound the work a rerun redoes."""
    from lit_gpt.tokenizer import Tokenizer

    num_workers = num_workers or os.cpu_count() or 1
    include = [include] if isinstance(include, str) else list(include)
    try:
        tokenizer = Tokenizer(tokenizer_dir)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from None
    names = source.list_files(include, exclude)[:max_files]
    what = f"{source.describe()} {' '.join(include)}"
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    options = {"include": include, "exclude": list(exclude), "prefix": prefix, "chunk_size": chunk_size,
               "max_tokens": max_tokens, "tokenizer_sha256": file_sha256(tokenizer.path), **reader.options(),
               "hf_config": getattr(source, "config", None)}  # a Hub config adds its card's file patterns
    manifest = Manifest(destination / f"{prefix}.manifest.json", options)
    writer = PackedDatasetWriter(destination, prefix, chunk_size, tokenizer.vocab_size)
    for stale in destination.glob(f".{manifest.path.name}.tmp-*"):  # left by a kill during a manifest write
        stale.unlink()
    if not manifest.load():
        if any(destination.glob(f"{prefix}_*.bin")) and not manifest.path.exists():
            raise DataError(f"{destination}: holds {prefix}_*.bin files but no {manifest.path.name}; "
                            "use an empty --destination")
        manifest.save()  # before the first chunk: every chunk on disk is then one a rerun knows to drop or keep
    elif manifest.complete:
        log(f"{destination}: {prefix} already complete ({len(manifest.files)} files); nothing to do")
        return manifest.stats
    writer.resume_from(manifest.position)  # drops chunks written after the last save

    done, partial = manifest.files, manifest.partial
    if names[: len(done)] != done or (partial and names[len(done): len(done) + 1] != [partial["name"]]):
        raise DataError(f"{manifest.path}: the files done so far are not the first files of {source.describe()}")
    todo = names[len(done):]
    log(f"{what}: {len(names)} files, {len(done)} done before, {len(todo)} to go, "
        f"{num_workers} tokenizer processes -> {destination}/{prefix}_*.bin")
    if partial:
        log(f"{partial['name']}: continuing after the {partial['batches']} batches written before")

    stats, progress = manifest.stats, Progress(len(names), progress_every)
    progress.files, start = len(done), time.perf_counter()
    total_tokens = writer.counter * chunk_size + writer.n_buffered
    fork = sys.platform == "linux"
    context = multiprocessing.get_context("fork" if fork else "spawn")
    tokenizers = ProcessPoolExecutor(num_workers, mp_context=context, initializer=init_worker,
                                     initargs=(tokenizer if fork else str(tokenizer_dir), reader, os.getpid()))
    # start the processes before any thread exists (fork after threads is unsafe), and surface init errors
    for f in [tokenizers.submit(os.getpid) for _ in range(num_workers)]:
        f.result()
    downloads = destination / f".{prefix}.downloads"  # remote files while they are read; a killed run's are stale
    shutil.rmtree(downloads, ignore_errors=True)
    if source.remote:
        downloads.mkdir()
    fetch = functools.partial(fetch_file, source, folder=downloads, reader=reader, log=log)
    fetchers = ThreadPoolExecutor(download_workers)
    fetched: deque[Future] = deque(fetchers.submit(fetch, n) for n in todo[: download_workers + 1])
    # (future or None, file name, batches of the file written once this one is, None or the file's facts when it is
    # its last batch)
    pending: deque = deque()
    max_pending = 2 * num_workers + 2
    last_commit = time.perf_counter()

    def commit(partial: Optional[dict] = None) -> None:
        nonlocal last_commit
        manifest.partial, manifest.position = partial, writer.commit()
        manifest.save()
        last_commit = time.perf_counter()

    def finish_one() -> bool:
        """Writes the oldest pending result (and commits if it ends a file); True once max_tokens is reached."""
        nonlocal total_tokens
        future, name, batches_written, file_facts = pending.popleft()
        if future is not None:
            tokens, lengths, sets, bad = future.result()
            if max_tokens is not None and total_tokens + len(tokens) >= max_tokens:
                keep = int(np.searchsorted(np.cumsum(lengths), max_tokens - total_tokens)) + 1
                tokens, lengths, sets = tokens[: int(lengths[:keep].sum())], lengths[:keep], sets[:keep]
            writer.add_array(tokens)
            stats.merge(bad)
            for set_name, n in zip(sets, lengths):
                stats.docs[set_name] += 1
                stats.tokens[set_name] += int(n)
            total_tokens += len(tokens)
            progress.update(docs=len(lengths), tokens=len(tokens))
        reached = max_tokens is not None and total_tokens >= max_tokens
        if file_facts is not None or reached:
            raw_size, damage, temporary = file_facts or (0, None, None)
            if temporary is not None:  # a downloaded file: all its batches are read
                temporary.unlink(missing_ok=True)
            stats.files += 1
            stats.bytes_in += raw_size
            if damage:
                stats.damaged_files[name] = damage
            stats.empty_files += [name] if raw_size == 0 and file_facts else []
            manifest.files.append(name)
            manifest.complete = reached or len(manifest.files) == len(names)
            commit()
            progress.update(files=1)
        elif time.perf_counter() - last_commit >= commit_every and batches_written is not None:
            commit({"name": name, "batches": batches_written})
        return reached

    def run() -> None:
        for i, name in enumerate(todo):
            try:
                raw_size, batches, damage, temporary = fetched.popleft().result()
            except DataError:
                while pending:  # keep (and record) the work done before the failure, then report it
                    if finish_one():
                        break
                raise
            if i + download_workers + 1 < len(todo):
                fetched.append(fetchers.submit(fetch, todo[i + download_workers + 1]))
            progress.update(bytes=raw_size)
            if raw_size == 0:
                log(f"warning: {name}: empty file")
            if damage:
                log(f"warning: {name}: {damage}; keeping what is readable before the damage")
            batches = batches or [("lines", name, 1, b"")]
            skip = partial["batches"] if i == 0 and partial else 0  # written before a commit mid-file
            if skip > len(batches) - 1:
                raise DataError(f"{name}: has {len(batches)} batches now, {skip} of them were written before; "
                                f"the file changed since: use a fresh --destination")
            for j, batch in enumerate(batches[skip:], start=skip):
                facts = (raw_size, damage, temporary) if j == len(batches) - 1 else None
                # a damaged file's batches may differ when it is read again: commit it whole only
                pending.append((tokenizers.submit(tokenize_batch, batch), name, None if damage else j + 1, facts))
                while len(pending) > max_pending:
                    if finish_one():
                        return
            while pending and (pending[0][0] is None or pending[0][0].done()):  # commit what is ready now
                if finish_one():
                    return
        while pending:
            if finish_one():
                return

    try:
        run()
    finally:
        fetchers.shutdown(wait=False, cancel_futures=True)
        tokenizers.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(downloads, ignore_errors=True)
    progress.close()
    if writer.counter == 0 and writer.n_buffered == 0:
        manifest.path.unlink()  # nothing was written: leave the destination as it was, so a rerun starts afresh
        why = (f"{len(stats.damaged_files)} damaged, {len(stats.empty_files)} empty, "
               f"{sum(stats.skipped.values())} documents skipped, {sum(stats.filtered.values())} filtered out, "
               f"{sum(stats.malformed.values())} malformed rows")
        raise DataError(f"{what}: no tokens to write from {stats.files} files ({why})")
    log(summary(stats, time.perf_counter() - start, destination, prefix, writer))
    return stats


def summary(stats: Stats, elapsed: float, destination: Path, prefix: str, writer: PackedDatasetWriter) -> str:
    n_chunks = writer.counter + (1 if writer.n_buffered else 0)
    lines = [f"done in {elapsed:.1f}s: {stats.files} files, {sum(stats.docs.values()):,} documents, "
             f"{sum(stats.tokens.values()):,} tokens -> {n_chunks} chunks {destination}/{chunk_name(prefix, 0)}.."]
    width = max([len(s) for s in stats.docs] + [len(s) for s in stats.skipped] + [10])
    lines.append(f"  {'set':<{width}} {'documents':>12} {'tokens':>15}")
    for set_name in sorted(stats.docs):
        lines.append(f"  {set_name:<{width}} {stats.docs[set_name]:>12,} {stats.tokens[set_name]:>15,}")
    for set_name in sorted(stats.skipped):
        lines.append(f"  {set_name:<{width}} {stats.skipped[set_name]:>12,} {'skipped':>15}")
    for rule, n in sorted(stats.filtered.items()):
        lines.append(f"  filtered out by {rule}: {n:,}")
    for reason, n in sorted(stats.malformed.items()):
        lines.append(f"  malformed rows ({reason}): {n:,}, e.g. {', '.join(stats.examples.get(reason, []))}")
    for name, damage in stats.damaged_files.items():
        lines.append(f"  LOST data of {name}: {damage}")
    if stats.empty_files:
        lines.append(f"  empty files: {', '.join(stats.empty_files)}")
    if not (stats.malformed or stats.damaged_files or stats.empty_files):
        lines.append("  no malformed rows, damaged or empty files")
    return "\n".join(lines)
