import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gpt.data.packed import (
    PackedDatasetWriter,
    TokenStream,
    chunk_name,
    make_dataloader,
    quotas,
    read_chunk,
    read_header,
)


def tinyllama_chunk(path: Path, tokens: np.ndarray, chunk_size: int, sep: int = 1) -> None:
    """A chunk in TinyLlama's exact byte layout, built by hand: the buffer pre-filled with the separator."""
    buffer = np.full(chunk_size, sep, dtype=np.uint16)
    buffer[: len(tokens)] = tokens
    with open(path, "wb") as f:
        f.write(b"LITPKDS")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", 8))  # uint16
        f.write(struct.pack("<Q", chunk_size))
        f.write(buffer.tobytes(order="C"))


def write_stream(folder: Path, prefix: str, tokens: np.ndarray, chunk_size: int, vocab_size: int = 4096) -> None:
    with PackedDatasetWriter(folder, prefix, chunk_size, vocab_size) as writer:
        for piece in np.array_split(tokens, 7):  # arrays that straddle chunk boundaries
            writer.add_array(piece)


def test_tinyllama_layout_round_trip(tmp_path):
    tokens = np.arange(3000, dtype=np.uint16) % 4000
    tinyllama_chunk(tmp_path / "train_x_0000000000.bin", tokens[:1000], 1000)
    tinyllama_chunk(tmp_path / "train_x_0000000001.bin", tokens[1000:1900], 1000)  # padded with BOS like theirs
    # our writer produces the same bytes for a full chunk
    PackedDatasetWriter(tmp_path / "ours", "train_x", 1000, 32000).add_array(tokens[:1000])
    assert (tmp_path / "ours" / chunk_name("train_x", 0)).read_bytes() == (tmp_path / "train_x_0000000000.bin").read_bytes()

    assert read_header(tmp_path / "train_x_0000000001.bin") == (np.dtype(np.uint16), 1000)
    expected = np.concatenate([tokens[:1900], np.ones(100, dtype=np.uint16)])
    stream = TokenStream(tmp_path, "train_x")
    assert np.array_equal(stream.read(0, 2000), expected)
    loader = make_dataloader([(tmp_path, "train_x", 1.0)], block_size=99, batch_size=3, infinite=False, shuffle=False)
    blocks = torch.cat(list(loader))
    assert blocks.dtype == torch.int64 and blocks.shape == (20, 100)
    assert torch.equal(blocks.flatten(), torch.from_numpy(expected.astype(np.int64)))


def test_writer_keeps_every_token_and_writes_true_final_length(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 70000, size=2550)
    write_stream(tmp_path, "p", tokens, chunk_size=1000, vocab_size=70000)
    files = sorted(tmp_path.glob("p_*.bin"))
    assert [f.name for f in files] == [chunk_name("p", i) for i in range(3)]
    assert [read_header(f) for f in files] == [(np.dtype(np.int32), 1000)] * 2 + [(np.dtype(np.int32), 550)]
    assert np.array_equal(np.concatenate([read_chunk(f) for f in files]), tokens)
    assert not list(tmp_path.glob(".*tmp*")), "temp files left behind"
    with pytest.raises(ValueError, match="token ids must lie in"):
        PackedDatasetWriter(tmp_path, "q", 10, 100).add_array(np.array([5, 100]))


def test_writer_resumes_from_a_commit_after_a_crash(tmp_path):
    tokens = np.arange(5000) % 4096
    writer = PackedDatasetWriter(tmp_path, "p", 300, 4096)
    writer.add_array(tokens[:1234])
    position = writer.commit()
    assert position == (4, 34)
    writer.add_array(tokens[1234:2500])  # "crash": written but not committed; then a temp file left over
    (tmp_path / ".p_0000000009.bin.tmp-1").write_bytes(b"junk")
    resumed = PackedDatasetWriter(tmp_path, "p", 300, 4096)
    resumed.resume_from(position)
    resumed.add_array(tokens[1234:])
    resumed.close()
    files = sorted(tmp_path.glob("p_*.bin"))
    assert len(files) == 17 and not list(tmp_path.glob(".*"))
    assert np.array_equal(np.concatenate([read_chunk(f) for f in files]), tokens)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        make_dataloader([(tmp_path / "missing", "train_slimpajama", 1.0)], 8, 2)
    with pytest.raises(FileNotFoundError, match=r"no files matching train_slimpajama\*\.bin"):
        make_dataloader([(tmp_path, "train_slimpajama", 1.0)], 8, 2)
    (tmp_path / "train_slimpajama_0000000000.bin").write_bytes(b"NOTMAGIC" + bytes(40))
    with pytest.raises(ValueError, match=r"train_slimpajama_0000000000.bin: not a packed chunk file \(bad magic\)"):
        make_dataloader([(tmp_path, "train_slimpajama", 1.0)], 8, 2)
    tinyllama_chunk(tmp_path / "train_slimpajama_0000000000.bin", np.arange(100), 100)
    with open(tmp_path / "train_slimpajama_0000000000.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="truncated"):
        make_dataloader([(tmp_path, "train_slimpajama", 1.0)], 8, 2)
    write_stream(tmp_path / "small", "s", np.arange(5), 10)
    with pytest.raises(ValueError, match="fewer than one block"):
        make_dataloader([(tmp_path / "small", "s", 1.0)], 8, 2)
    with pytest.raises(ValueError, match="weights"):
        make_dataloader([(tmp_path / "small", "s", 0.0)], 2, 2)


@pytest.fixture
def two_sources(tmp_path):
    """Source a: 1700 tokens in 7 chunk files of 256; source b: 3 files. Token value = position + source offset."""
    write_stream(tmp_path, "train_a", np.arange(1700), chunk_size=256)
    write_stream(tmp_path, "train_b", 2000 + np.arange(600), chunk_size=256)
    return [(tmp_path, "train_a", 0.693584), (tmp_path, "train_b", 0.306416)]


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_blocks_are_contiguous_stream_slices(two_sources):
    for batch in take(make_dataloader(two_sources, block_size=16, batch_size=4), 50):
        assert batch.shape == (4, 17) and batch.dtype == torch.int64
        assert torch.equal(batch - batch[:, :1], torch.arange(17).expand(4, 17))  # 17 consecutive tokens
        first = batch[:, 0]
        assert torch.where(first < 2000, first % 17, (first - 2000) % 17).eq(0).all()  # blocks start on a stride


def test_each_epoch_is_a_fresh_permutation_split_over_ranks(tmp_path):
    write_stream(tmp_path, "train_a", np.arange(17 * 40), chunk_size=17 * 4)
    n_blocks = 40
    firsts = []
    for rank in range(2):
        loader = make_dataloader([(tmp_path, "train_a", 1.0)], 16, 5, rank=rank, world_size=2, shuffle_window=2)
        firsts.append(torch.cat(take(loader, 8))[:, 0] // 17)  # 40 samples: two epochs' worth of this rank
    epoch0 = torch.cat([f[:20] for f in firsts])
    epoch1 = torch.cat([f[20:] for f in firsts])
    assert sorted(epoch0.tolist()) == list(range(n_blocks)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1), "epochs must reshuffle"
    assert not torch.equal(epoch0, torch.arange(n_blocks)), "blocks must be shuffled"


def test_a_source_with_fewer_files_than_the_shuffle_window(tmp_path):
    write_stream(tmp_path, "one", np.arange(170), chunk_size=1000)  # a single, partial chunk
    loader = make_dataloader([(tmp_path, "one", 1.0)], 16, 4, shuffle_window=8)
    firsts = torch.cat(take(loader, 5))[:, 0] // 17  # two epochs of 10 blocks
    assert sorted(firsts[:10].tolist()) == list(range(10)) == sorted(firsts[10:20].tolist())


def test_weights_are_met_exactly_per_round(two_sources):
    q = quotas([0.693584, 0.306416], 4096)
    assert q.sum() == 4096 and abs(q[0] / 4096 - 0.693584) < 1 / 4096
    loader = make_dataloader(two_sources, block_size=16, batch_size=64)
    from_a = sum(int((b[:, 0] < 2000).sum()) for b in take(loader, 128))  # 8192 samples = 2 rounds
    assert from_a == 2 * q[0]


def test_finite_pass_covers_every_block_once_over_ranks_and_workers(tmp_path):
    # 7 + 3 files do not divide among 2 ranks x 2 workers; every block still comes exactly once, in order
    write_stream(tmp_path, "val_a", np.arange(1700), chunk_size=256)
    write_stream(tmp_path, "val_b", 2000 + np.arange(600), chunk_size=256)
    sources = [(tmp_path, "val_a", 1.0), (tmp_path, "val_b", 1.0)]
    expected = [17 * i for i in range(100)] + [2000 + 17 * i for i in range(35)]
    seen = []
    for rank in range(2):
        loader = make_dataloader(sources, 16, 4, rank=rank, world_size=2, num_workers=2, infinite=False)
        firsts = torch.cat(list(loader))[:, 0].tolist()
        assert firsts == expected[rank::2] and len(loader) == -(-len(firsts) // 4)
        seen += firsts
    assert sorted(seen) == expected


@pytest.mark.slow
@pytest.mark.parametrize("workers_before,workers_after", [(0, 0), (1, 2), (2, 0)])
def test_resume_equals_uninterrupted_run(two_sources, workers_before, workers_after):
    for rank in range(2):
        kw = dict(block_size=16, batch_size=3, rank=rank, world_size=2)
        full = take(make_dataloader(two_sources, num_workers=0, **kw), 40)
        first = make_dataloader(two_sources, num_workers=workers_before, **kw)
        it = iter(first)
        head = [next(it) for _ in range(13)]  # workers have prefetched further: the state must not count that
        state = first.state_dict()
        del it
        second = make_dataloader(two_sources, num_workers=workers_after, **kw)
        second.load_state_dict(state)
        tail = take(second, 27)
        assert all(torch.equal(a, b) for a, b in zip(full, head + tail))


def test_load_state_dict_refuses_what_it_cannot_honour(two_sources):
    loader = make_dataloader(two_sources, 16, 2, world_size=2)
    take(loader, 3)
    state = loader.state_dict()
    assert state["samples_seen"] == 6
    with pytest.raises(ValueError, match="seed"):
        make_dataloader(two_sources, 16, 2, world_size=2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="block_size"):
        make_dataloader(two_sources, 32, 2, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="sources"):
        make_dataloader(two_sources[:1], 16, 2, world_size=2).load_state_dict(state)
    other = make_dataloader(two_sources, 16, 5, world_size=2, rank=1)  # another batch size and rank resume fine
    other.load_state_dict(state)
    assert other.state_dict()["samples_seen"] == 6



@pytest.mark.parametrize("resized", [1, 4])
def test_resume_on_another_world_size_uses_every_block_once(tmp_path, resized):
    """Elastic resume: 2 ranks hand out some blocks, then `resized` ranks resume from rank 0's state, then 2 again
    from theirs. One source: together they hand out its whole epoch, each block once. Two sources (weights 1:3):
    nothing twice, and each source's blocks are exactly the first ones of its epoch order (none skipped)."""
    block = 17  # tokens are their own stream positions, so a block's first token names it
    write_stream(tmp_path, "a", np.arange(30 * block, dtype=np.int32), 4 * block, vocab_size=1 << 20)
    write_stream(tmp_path, "b", np.arange(10**6, 10**6 + 200 * block, dtype=np.int32), 8 * block, vocab_size=1 << 21)

    def run(sources, world, per_rank, state=None):
        loaders = [make_dataloader(sources, block - 1, 1, rank=r, world_size=world, shuffle_window=2)
                   for r in range(world)]
        for loader in loaders:
            if state is not None:
                loader.load_state_dict(state)
        firsts = [int(b[0, 0]) for loader in loaders for b in take(loader, per_rank)]
        return firsts, loaders[0].state_dict(), loaders[0].plan

    one = [(tmp_path, "a", 1.0)]
    first, state, _ = run(one, 2, 5)
    second, _, _ = run(one, resized, 20 // resized, state)
    assert sorted(x // block for x in first + second) == list(range(30))

    two = [(tmp_path, "a", 1.0), (tmp_path, "b", 3.0)]
    first, state, _ = run(two, 2, 12)
    second, state, _ = run(two, resized, 40 // resized, state)
    third, _, plan = run(two, 2, 18, state)
    seen = first + second + third
    assert len(set(seen)) == len(seen) == 100
    for s, offset in enumerate([0, 10**6]):
        mine = sorted((x - offset) // block for x in seen if (x >= 10**6) == bool(s))
        assert mine == sorted(plan.orders[s].block(0, i) for i in range(len(mine))), s
