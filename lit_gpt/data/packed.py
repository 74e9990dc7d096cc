"""Packed token chunks: the file format, an atomic writer, and a resumable, weighted, sharded loader.

File `{prefix}_{counter:010d}.bin` (bit-compatible with TinyLlama's): a 24-byte header, `b"LITPKDS"`, version
`<Q` = 1, dtype code `<B`, chunk_size `<Q` (tokens in this file), then the tokens in C order. Every chunk is full
except the last one of a stream, whose header holds its true length (never padded with fake tokens).

The loader sees each source's chunks, in counter order, as one token stream cut into blocks of `block_size + 1`
tokens. Which block comes next is a pure function of (seed, epoch, position), so the loader's state is a count of
samples handed out: resuming costs O(1) whatever the number of workers, also on another number of ranks.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from lit_gpt.utils import atomic_write, fsync

MAGIC = b"LITPKDS"
VERSION = 1
HEADER = struct.Struct("<7sQBQ")  # magic, version, dtype code, chunk_size: 24 bytes
HEADER_SIZE = HEADER.size
CODE_TO_DTYPE = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64,
                 8: np.uint16}  # the header's dtype code -> numpy dtype
DTYPE_TO_CODE = {np.dtype(v): k for k, v in CODE_TO_DTYPE.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def chunk_name(prefix: str, counter: int) -> str:
    return f"{prefix}_{counter:010d}.bin"


def write_chunk(path: Union[str, Path], tokens: np.ndarray) -> None:
    """Writes one chunk atomically: a temp file in the same folder, fsync, then rename over `path`."""
    with atomic_write(path, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, DTYPE_TO_CODE[tokens.dtype], len(tokens)))
        f.write(np.ascontiguousarray(tokens).tobytes(order="C"))


def read_header(path: Union[str, Path]) -> tuple[np.dtype, int]:
    """(dtype, number of tokens) of a chunk file; a one-line ValueError for anything that is not a whole chunk."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE or raw[:7] != MAGIC:
        raise ValueError(f"{path}: not a packed chunk file (bad magic)")
    _, version, code, n_tokens = HEADER.unpack(raw)
    if version != VERSION:
        raise ValueError(f"{path}: unsupported packed chunk version {version} (expected {VERSION})")
    if code not in CODE_TO_DTYPE:
        raise ValueError(f"{path}: unknown dtype code {code} in header")
    dtype = np.dtype(CODE_TO_DTYPE[code])
    size = os.path.getsize(path)
    if size != HEADER_SIZE + n_tokens * dtype.itemsize:
        raise ValueError(f"{path}: truncated or oversized (header says {n_tokens} tokens, file holds {size} bytes)")
    return dtype, n_tokens


def read_chunk(path: Union[str, Path]) -> np.ndarray:
    dtype, n_tokens = read_header(path)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(n_tokens,))


class PackedDatasetWriter:
    """Packs token arrays into `chunk_size`-token files `{out_dir}/{prefix}_{counter:010d}.bin`.

    `commit()` writes the tokens buffered so far as a partial chunk under the current counter (later replaced by
    the full chunk) and returns the position `(counter, n_buffered)`; `resume_from(position)` reloads it, so a
    killed job can continue exactly where its last commit left off.
    """

    def __init__(self, out_dir: Union[str, Path], prefix: str, chunk_size: int, vocab_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.chunk_size, self.vocab_size = prefix, chunk_size, vocab_size
        self.dtype = dtype_for_vocab(vocab_size)
        self.buffer = np.empty(chunk_size, dtype=self.dtype)
        self.n_buffered, self.counter = 0, 0

    def add_array(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{tokens.min()}, {tokens.max()}]")
        start = 0
        while start < len(tokens):
            n = min(len(tokens) - start, self.chunk_size - self.n_buffered)
            self.buffer[self.n_buffered : self.n_buffered + n] = tokens[start : start + n]
            self.n_buffered += n
            start += n
            if self.n_buffered == self.chunk_size:
                self._write(self.chunk_size)
                self.counter += 1
                self.n_buffered = 0

    def _write(self, n_tokens: int) -> None:
        path = self.out_dir / chunk_name(self.prefix, self.counter)
        write_chunk(path, self.buffer[:n_tokens])

    def commit(self) -> tuple[int, int]:
        """Makes every token added so far durable; returns the position to resume from."""
        if self.n_buffered:
            self._write(self.n_buffered)
        fsync(self.out_dir)
        return self.counter, self.n_buffered

    def resume_from(self, position: tuple[int, int]) -> None:
        """Continues after a commit: reloads the partial chunk and deletes chunks written after that commit."""
        counter, n_buffered = position
        if n_buffered:
            partial = read_chunk(self.out_dir / chunk_name(self.prefix, counter))
            if len(partial) < n_buffered:
                raise ValueError(f"{self.out_dir / chunk_name(self.prefix, counter)}: holds fewer tokens than committed")
            self.buffer[:n_buffered] = partial[:n_buffered]
        first_stale = counter + 1 if n_buffered else counter
        for path in self.out_dir.glob(f"{self.prefix}_*.bin"):
            index = path.stem[len(self.prefix) + 1 :]
            if index.isdigit() and int(index) >= first_stale:
                path.unlink()
        for path in self.out_dir.glob(f".{self.prefix}_*.tmp-*"):
            path.unlink()
        self.counter, self.n_buffered = counter, n_buffered

    def close(self) -> None:
        """Writes the final partial chunk with its true length in the header."""
        self.commit()

    def __enter__(self) -> "PackedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


# ----------------------------------------------------------------------------------------------------------------
# Reading


class TokenStream:
    """One source: its chunk files, in counter order, read as one stream of tokens."""

    def __init__(self, data_dir: Union[str, Path], prefix: str, max_open: int = 64) -> None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"{data_dir}: no such folder")
        self.files = sorted(str(p) for p in data_dir.glob(f"{prefix}*.bin"))
        if not self.files:
            raise FileNotFoundError(f"{data_dir}: no files matching {prefix}*.bin")
        lengths = [read_header(path)[1] for path in self.files]
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.n_tokens = int(self.starts[-1])
        self.max_chunk = max(lengths)
        self.max_open = max_open
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:  # memmaps are reopened in each DataLoader worker
        return {**self.__dict__, "_open": OrderedDict()}

    def _chunk(self, i: int) -> np.ndarray:
        if i in self._open:
            self._open.move_to_end(i)
        else:
            self._open[i] = read_chunk(self.files[i])
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[i]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream as int64, across chunk boundaries."""
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        done = 0
        while done < length:
            offset = start + done - int(self.starts[i])
            n = min(length - done, int(self.starts[i + 1]) - start - done)
            out[done : done + n] = self._chunk(i)[offset : offset + n]
            done += n
            i += 1
        return out


class BlockOrder:
    """Order of one source's blocks in each epoch: a seeded shuffle of segments (about one chunk of blocks each),
    then a shuffle of the blocks inside each window of `shuffle_window` consecutive segments, so that reading stays
    local to a few chunks at a time. Epoch e's order is a pure function of (seed, source index, e)."""

    def __init__(self, n_blocks: int, segment: int, shuffle_window: int, seed: int, source: int) -> None:
        self.n_blocks, self.segment, self.window = n_blocks, max(1, segment), max(1, shuffle_window)
        self.seed, self.source = seed, source
        self.n_segments = -(-n_blocks // self.segment)
        self._epoch: Optional[tuple] = None
        self._win: Optional[tuple] = None

    def block(self, epoch: int, position: int) -> int:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, self.source, epoch, 0])
            order = rng.permutation(self.n_segments)
            sizes = np.minimum(self.segment, self.n_blocks - order * self.segment)
            ends = np.cumsum(sizes)
            window_starts = np.concatenate([[0], ends[self.window - 1 :: self.window]])
            self._epoch = (epoch, order, ends, window_starts)
        _, order, ends, window_starts = self._epoch
        w = int(np.searchsorted(window_starts, position, side="right")) - 1
        if self._win is None or self._win[:2] != (epoch, w):
            segs = order[w * self.window : (w + 1) * self.window]
            blocks = np.concatenate([np.arange(s * self.segment, min((s + 1) * self.segment, self.n_blocks)) for s in segs])
            rng = np.random.default_rng([self.seed, self.source, epoch, w + 1])
            self._win = (epoch, w, blocks[rng.permutation(len(blocks))])
        return int(self._win[2][position - int(window_starts[w])])


class MixPlan:
    """Which (source, block) each sample of a rank is. Samples come in rounds of `round_size`, each holding every
    source in proportion to its weight (exact quotas, shuffled by seed): the number of samples of each source before
    sample k is then known in O(1), and is the same on every rank. Rank r takes positions c * world_size + r of each
    source's shuffled stream, so ranks never overlap. With `infinite=False`: every block of every source once, in
    order, rank r taking blocks r, r + world_size, ..."""

    def __init__(self, streams: Sequence[TokenStream], weights: Sequence[float], block_size: int, seed: int,
                 rank: int, world_size: int, shuffle: bool, infinite: bool, shuffle_window: int, round_size: int = 4096):
        self.streams, self.block_len = streams, block_size + 1
        self.rank, self.world_size, self.shuffle, self.infinite = rank, world_size, shuffle, infinite
        self.n_blocks = [s.n_tokens // self.block_len for s in streams]
        for s, n in zip(streams, self.n_blocks):
            if n == 0:
                raise ValueError(f"{Path(s.files[0]).parent}: only {s.n_tokens} tokens, fewer than one block of {self.block_len}")
        self.orders = [BlockOrder(n, s.max_chunk // self.block_len, shuffle_window, seed, i)
                       for i, (s, n) in enumerate(zip(streams, self.n_blocks))]
        self.quotas = quotas(weights, round_size)
        self.round_size, self.seed = round_size, seed
        self.total_blocks = sum(self.n_blocks)
        self._round: Optional[tuple] = None
        self.base, self.anchor = np.zeros(len(streams), np.int64), 0  # see PackedDataLoader.load_state_dict

    def __len__(self) -> int:
        """Samples this rank yields in one finite pass."""
        return len(range(self.rank, self.total_blocks, self.world_size))

    def _round_sources(self, r: int) -> np.ndarray:
        if self._round is None or self._round[0] != r:
            sources = np.repeat(np.arange(len(self.quotas)), self.quotas)
            np.random.default_rng([self.seed, 1 << 20, r]).shuffle(sources)
            self._round = (r, sources)
        return self._round[1]

    def samples(self, start: int) -> Iterator[tuple[int, int]]:
        """(source, first token) of this rank's samples from sample index `start` on."""
        if not self.infinite:
            bounds = np.cumsum(self.n_blocks)
            for g in range(self.rank + start * self.world_size, self.total_blocks, self.world_size):
                s = int(np.searchsorted(bounds, g, side="right"))
                yield s, (g - int(bounds[s] - self.n_blocks[s])) * self.block_len
            return
        counts, anchored = self.counts(start), self.counts(self.anchor)
        k = start
        while True:
            r, j = divmod(k, self.round_size)
            s = int(self._round_sources(r)[j])
            position = int(self.base[s] + (counts[s] - anchored[s]) * self.world_size) + self.rank
            counts[s] += 1
            epoch, i = divmod(position, self.n_blocks[s])
            block = self.orders[s].block(epoch, i) if self.shuffle else i
            yield s, block * self.block_len
            k += 1


    def counts(self, k: int) -> np.ndarray:
        """Samples of each source among every rank's first k (the same on all ranks)."""
        r, j = divmod(k, self.round_size)
        return r * self.quotas + np.bincount(self._round_sources(r)[:j], minlength=len(self.quotas))


def quotas(weights: Sequence[float], round_size: int) -> np.ndarray:
    """Integer shares of `round_size` proportional to `weights` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"source weights must be non-negative with a positive sum, got {list(weights)}")
    exact = w / w.sum() * round_size
    q = np.floor(exact).astype(np.int64)
    q[np.argsort(-(exact - q), kind="stable")[: round_size - q.sum()]] += 1
    return q


class _Blocks(torch.utils.data.Dataset):
    """Reads the block a (source, first token) key names; lives in each DataLoader worker."""

    def __init__(self, streams: Sequence[TokenStream], block_len: int) -> None:
        self.streams, self.block_len = streams, block_len

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        source, start = key
        return torch.from_numpy(self.streams[source].read(start, self.block_len))


class _BatchPlans(torch.utils.data.Sampler):
    def __init__(self, plan: MixPlan, start: int, batch_size: int) -> None:
        self.plan, self.start, self.batch_size = plan, start, batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = []
        for key in self.plan.samples(self.start):
            batch.append(key)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


class PackedDataLoader:
    """Iterating yields LongTensor batches (batch_size, block_size + 1). `state_dict()` counts only the samples
    handed to the caller (not those prefetched by workers), so `load_state_dict()` resumes at the exact next batch,
    whatever `num_workers` was before or is now."""

    def __init__(self, sources: Sequence[tuple], block_size: int, batch_size: int, seed: int = 42, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, shuffle: bool = True, infinite: bool = True,
                 shuffle_window: int = 8) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size and block_size must be positive, got {batch_size}, {block_size}")
        self.sources = [(str(d), p, float(w)) for d, p, w in sources]
        self.streams = [TokenStream(d, p) for d, p, _ in self.sources]
        self.plan = MixPlan(self.streams, [w for *_, w in self.sources], block_size, seed, rank, world_size,
                            shuffle, infinite, shuffle_window)
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.shuffle, self.infinite = shuffle, infinite
        self.samples_seen = 0

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite loader has no length")
        return -(-len(self.plan) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            _Blocks(self.streams, self.block_size + 1),
            batch_sampler=_BatchPlans(self.plan, self.samples_seen, self.batch_size),
            num_workers=self.num_workers,
            collate_fn=torch.stack,
            # its own generator: starting an iterator draws a seed from it, and a draw from the global one would put
            # a resumed run's RNG one draw ahead of the uninterrupted run's
            generator=torch.Generator().manual_seed(self.seed),
        )
        for batch in loader:
            self.samples_seen += len(batch)
            yield batch
        if not self.infinite:  # the next pass starts over
            self.samples_seen = 0

    def _identity(self) -> dict:
        return {
            "sources": [(p, w, s.n_tokens) for (_, p, w), s in zip(self.sources, self.streams)],
            "block_size": self.block_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "infinite": self.infinite,
        }

    def state_dict(self) -> dict:
        return {"version": 1, "samples_seen": self.samples_seen, "world_size": self.world_size, **self._identity(),
                "base": self.plan.base.tolist(), "anchor": self.plan.anchor}

    def load_state_dict(self, state: dict) -> None:
        """Any rank's state (all ranks hand out the same number of samples), also of a run with another world size:
        then each source's stream continues after the positions all the old ranks used, none repeated or skipped."""
        plan, saved_world, seen = self.plan, int(state["world_size"]), int(state["samples_seen"])
        base, anchor = np.array(state.get("base", [0] * len(self.streams)), np.int64), int(state.get("anchor", 0))
        if saved_world != self.world_size:
            base, anchor = base + (plan.counts(seen) - plan.counts(anchor)) * saved_world, seen
        mine = self._identity()
        for key, value in mine.items():
            saved = state.get(key)
            if key == "sources" and saved is not None:
                saved = [tuple(s) for s in saved]
            if saved != value:
                raise ValueError(f"loader state was saved with {key}={saved}, this loader has {key}={value}")
        self.samples_seen, plan.base, plan.anchor = seen, base, anchor


def make_dataloader(sources: Sequence[tuple], block_size: int, batch_size: int, seed: int = 42, rank: int = 0,
                    world_size: int = 1, num_workers: int = 0, shuffle: bool = True, infinite: bool = True,
                    shuffle_window: int = 8) -> PackedDataLoader:
    """`sources`: (data_dir, prefix, weight) tuples, files `{data_dir}/{prefix}*.bin`. `infinite=True`: shuffled
    (unless `shuffle=False`), weighted, reshuffled every epoch, never ending. `infinite=False` (validation): one
    pass over every block of every source once, in order, split across ranks (weights and `shuffle` unused)."""
    return PackedDataLoader(sources, block_size, batch_size, seed, rank, world_size, num_workers, shuffle, infinite,
                            shuffle_window)
