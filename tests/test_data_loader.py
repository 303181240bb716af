"""Token files and the batch loader: layout round trip, determinism, exact resume, rank disjointness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minillama.data import TokenFile, TokenLoader, windows_of, write_token_file
from minillama.data.tokenfile import HEADER_SIZE, MAGIC
from minillama.errors import MiniLlamaError


@pytest.fixture
def positions(tmp_path) -> TokenFile:
    """A token file whose id at offset i is i, so a batch tells exactly which offsets it read."""
    return write_token_file(tmp_path / "pos.bin", np.arange(10_007), dtype=np.uint32)


def take(loader: TokenLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


# --- token files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_token_file_round_trip(tmp_path, dtype):
    ids = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, size=1000, endpoint=True)
    tf = write_token_file(tmp_path / "t.bin", ids, dtype=dtype)
    assert tf.dtype == np.dtype(dtype) and len(tf) == 1000
    np.testing.assert_array_equal(tf.tokens, ids)
    raw = (tmp_path / "t.bin").read_bytes()
    assert raw[:8] == MAGIC and len(raw) == HEADER_SIZE + 1000 * np.dtype(dtype).itemsize
    assert TokenFile(tmp_path / "t.bin").tokens.dtype == np.dtype(dtype)


def test_token_file_dtype_follows_largest_id(tmp_path):
    assert write_token_file(tmp_path / "a.bin", [0, 65535]).dtype == np.uint16
    assert write_token_file(tmp_path / "b.bin", [0, 65536]).dtype == np.uint32


def test_token_file_empty(tmp_path):
    assert len(write_token_file(tmp_path / "e.bin", np.zeros(0, dtype=np.int64))) == 0


def test_token_file_rejects_damage(tmp_path):
    path = tmp_path / "t.bin"
    write_token_file(path, np.arange(100))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(MiniLlamaError, match="truncated"):
        TokenFile(path)
    path.write_bytes(b"\0" * 200)
    with pytest.raises(MiniLlamaError, match="not a minillama token file"):
        TokenFile(path)
    with pytest.raises(FileNotFoundError, match="minillama prepare"):
        TokenFile(tmp_path / "missing.bin")


def test_writer_refuses_ids_outside_dtype(tmp_path):
    with pytest.raises(MiniLlamaError, match="does not fit uint16"):
        write_token_file(tmp_path / "t.bin", [1, 70_000], dtype=np.uint16)
    assert list(tmp_path.iterdir()) == []  # nothing under the final name, no temporary left


# --- loader ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_batches_are_shifted_windows_of_the_file(positions, mode):
    loader = TokenLoader(positions, batch_size=4, seq_len=16, mode=mode, seed=3)
    for step in range(5):
        x, y = next(loader)
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        starts = loader.batch_starts(step)
        expected = torch.from_numpy(starts[:, None] + np.arange(17))
        torch.testing.assert_close(x, expected[:, :-1])
        torch.testing.assert_close(y, expected[:, 1:])


def test_sequential_walks_in_order_and_counts_epochs(tmp_path):
    tf = write_token_file(tmp_path / "t.bin", np.arange(1001))  # (1001 - 1) // 10 = 100 windows
    loader = TokenLoader(tf, batch_size=8, seq_len=10, mode="sequential")
    assert loader.batches_per_epoch == 12  # 96 windows; the last 4 are dropped each epoch
    first_epoch = take(loader, 12)
    torch.testing.assert_close(torch.cat([x for x, _ in first_epoch]).flatten(), torch.arange(960))
    assert loader.epoch == 1
    x, _ = next(loader)
    torch.testing.assert_close(x, first_epoch[0][0])


def test_same_seed_same_batches_other_seed_other_batches(positions):
    a = take(TokenLoader(positions, 4, 16, seed=1), 3)
    b = take(TokenLoader(positions, 4, 16, seed=1), 3)
    c = take(TokenLoader(positions, 4, 16, seed=2), 3)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c, strict=True))


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_resume_gives_exactly_the_batches_of_an_uninterrupted_run(positions, mode):
    straight = TokenLoader(positions, 8, 32, mode=mode, seed=7)
    take(straight, 50)  # crosses an epoch in sequential mode (39 batches per epoch)
    state = straight.state_dict()
    expected = take(straight, 30)

    resumed = TokenLoader(positions, 8, 32, mode=mode, seed=7)
    resumed.load_state_dict(torch.load(_saved(state), weights_only=True))  # as through a checkpoint
    assert resumed.epoch == state["epoch"]
    for (x, y), (ex, ey) in zip(take(resumed, 30), expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def _saved(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_resume_refuses_other_settings(positions):
    state = TokenLoader(positions, 8, 32, seed=7).state_dict()
    with pytest.raises(MiniLlamaError, match="seq_len was 32"):
        TokenLoader(positions, 8, 64, seed=7).load_state_dict(state)
    with pytest.raises(MiniLlamaError, match="seed was 7"):
        TokenLoader(positions, 8, 32, seed=8).load_state_dict(state)


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_ranks_split_the_single_process_global_batch(positions, mode):
    """Rank r of 3 gets rows [4r, 4r + 4) of the batch one process with batch 12 gets."""
    single = TokenLoader(positions, 12, 16, mode=mode, seed=5)
    ranks = [TokenLoader(positions, 4, 16, mode=mode, seed=5, rank=r, world_size=3) for r in range(3)]
    for _ in range(5):
        whole = next(single)[0]
        parts = [next(loader)[0] for loader in ranks]
        assert torch.equal(torch.cat(parts), whole)
        assert not torch.equal(parts[0], parts[1])


def test_sequential_ranks_read_disjoint_windows_in_an_epoch(positions):
    seen = []
    for rank in range(3):
        loader = TokenLoader(positions, 4, 16, mode="sequential", rank=rank, world_size=3)
        starts = set()
        for _ in range(loader.batches_per_epoch):
            starts.update(int(x[0]) for x in next(loader)[0])
        seen.append(starts)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_one_saved_state_resumes_every_rank_and_another_world_size(positions):
    """The state holds no rank: rank 0's state restores rank 1, and 1 process with the same
    global batch continues with exactly the union of the ranks' batches."""
    rank0 = TokenLoader(positions, 4, 16, seed=5, rank=0, world_size=2)
    rank1 = TokenLoader(positions, 4, 16, seed=5, rank=1, world_size=2)
    take(rank0, 10), take(rank1, 10)
    restored = TokenLoader(positions, 4, 16, seed=5, rank=1, world_size=2)
    restored.load_state_dict(rank0.state_dict())
    single = TokenLoader(positions, 8, 16, seed=5)
    single.load_state_dict(rank0.state_dict())
    first, second = next(rank0)[0], next(rank1)[0]
    assert torch.equal(next(restored)[0], second)
    assert torch.equal(next(single)[0], torch.cat([first, second]))
    with pytest.raises(MiniLlamaError, match="global_batch_size was 8"):
        TokenLoader(positions, 4, 16, seed=5).load_state_dict(rank0.state_dict())


def test_eval_batches_cover_the_file_once(positions):
    loader = TokenLoader(positions, 4, 16)
    windows = (len(positions) - 1) // 100
    inputs = torch.cat([x for x, _ in loader.eval_batches(batch_size=7, seq_len=100)])
    assert inputs.shape == (windows, 100)
    torch.testing.assert_close(inputs.flatten(), torch.arange(windows * 100))
    assert len(list(loader.eval_batches(7, 100, max_batches=3))) == 3
    assert loader.step == 0  # evaluation does not move the training position

    per_rank = [
        torch.cat([x for x, _ in TokenLoader(positions, 4, 16, rank=r, world_size=3).eval_batches(5, 100)])
        for r in range(3)
    ]
    assert windows % 3 and len({len(part) for part in per_rank}) == 1  # as many windows each: the tail left out
    starts = sorted(int(x[0]) for part in per_rank for x in part)
    assert starts == list(range(0, (windows - windows % 3) * 100, 100))
    plain = [x for x, _ in windows_of(np.arange(1001), batch_size=4, seq_len=100)]  # on any array
    assert [len(x) for x in plain] == [4, 4, 2] and int(plain[-1][-1, -1]) == 999


def test_loader_errors(positions, tmp_path):
    tiny = write_token_file(tmp_path / "tiny.bin", np.arange(20))
    with pytest.raises(MiniLlamaError, match="too few"):
        TokenLoader(tiny, 2, 32)
    val = TokenLoader(tiny, 4, 8, mode="sequential")  # too small to train on, fine for evaluation
    assert [x.shape for x, _ in val.eval_batches()] == [(2, 8)]
    with pytest.raises(MiniLlamaError, match="fewer than one global batch"):
        next(val)
    with pytest.raises(ValueError, match="mode"):
        TokenLoader(positions, 2, 8, mode="shuffled")
    with pytest.raises(ValueError, match="rank"):
        TokenLoader(positions, 2, 8, rank=2, world_size=2)
    assert TokenLoader(str(positions.path), 2, 8).num_tokens == len(positions)
