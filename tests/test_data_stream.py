"""The online training stream: prefetching keeps samples and order, and state_dict() matches the last trained
batch (batches fetched ahead by Lightning or made ahead by the prefetch thread do not count)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from conftest import BURGERS, DIFFUSION
from recording import fit_recording

from pfm.data import OnlineCropDataModule
from pfm.data.prefetch import Prefetcher, tensors_of

pytestmark = pytest.mark.usefixtures("one_thread")


def _module(**kwargs) -> OnlineCropDataModule:
    base = {
        "n": 16,
        "crop": 8,
        "batch_size": 2,
        "num_trajectories": 2,
        "refresh_fraction": 0.3,
        "seed": 1,
        "num_val_batches": 1,
        "val_burn_in_steps": 1,
    }
    return OnlineCropDataModule([DIFFUSION, BURGERS], **(base | kwargs))


def test_prefetch_trains_on_the_same_batches_in_the_same_order(tmp_path: Path) -> None:
    plain = _module(prefetch=False)
    plain.setup()
    expected = [plain.next_batch()["input"] for _ in range(4)]
    for prefetch in (True, False):
        trained = fit_recording(_module(prefetch=prefetch), 4, tmp_path).trained
        assert len(trained) == 4
        for got, want in zip(trained, expected, strict=True):
            assert torch.equal(got, want), f"prefetch={prefetch}: a batch differs from the plain stream"


@pytest.mark.parametrize(
    ("prefetch", "trainer_kwargs"),
    [(True, {}), (False, {}), (True, {"limit_val_batches": 1, "val_check_interval": 2})],
    ids=["prefetch", "no-prefetch", "prefetch+validation"],
)
def test_state_dict_matches_the_last_trained_batch(tmp_path: Path, prefetch: bool, trainer_kwargs) -> None:
    k = 3
    reference = fit_recording(_module(prefetch=prefetch), k + 2, tmp_path, **trainer_kwargs).trained
    datamodule = _module(prefetch=prefetch)
    model = fit_recording(datamodule, k, tmp_path, **trainer_kwargs)
    for got, want in zip(model.trained, reference, strict=False):
        assert torch.equal(got, want)
    state = datamodule.state_dict()
    assert all(pool["step"] == k for pool in state["pools"].values()), "the state counts batches made ahead"
    fresh = _module(prefetch=prefetch)
    fresh.setup()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.next_batch()["input"], reference[k]), "restored stream skips or repeats a batch"
    assert torch.equal(fresh.next_batch()["input"], reference[k + 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the lead's GPU check)")
def test_state_dict_matches_the_last_trained_batch_on_cuda(tmp_path: Path) -> None:
    """On a GPU: pools and snapshots on the generation stream; a restored module trains on the next batches."""
    k, gpu = 3, {"accelerator": "gpu"}
    reference = fit_recording(_module(), k + 2, tmp_path, **gpu).trained
    datamodule = _module()
    fit_recording(datamodule, k, tmp_path, **gpu)
    state = datamodule.state_dict()
    assert all(pool["step"] == k for pool in state["pools"].values())
    assert all(t.device.type == "cpu" for pool in state["pools"].values() for t in tensors_of(pool))
    fresh = _module()
    fresh.load_state_dict(state)
    resumed = fit_recording(fresh, 2, tmp_path, **gpu).trained
    for got, want in zip(resumed, reference[k:], strict=True):
        assert got.is_cuda and torch.equal(got, want), "restored stream on CUDA skips or repeats a batch"


def test_a_new_stream_continues_after_the_last_trained_batch() -> None:
    plain = _module(prefetch=False)
    plain.setup()
    expected = [plain.next_batch()["input"] for _ in range(5)]
    datamodule = _module(prefetch=True)
    datamodule.setup()
    first = iter(datamodule.train_dataloader())
    got = [next(first)["input"] for _ in range(2)]  # the thread has made batch 2 already
    second = iter(datamodule.train_dataloader())
    got += [next(second)["input"] for _ in range(3)]
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_prefetch_thread_keeps_the_training_threads_and_reraises_errors() -> None:
    before = torch.get_num_threads()
    seen = []

    def produce() -> int:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        if len(seen) == 2:
            raise RuntimeError("pool blew up")
        return len(seen)

    prefetcher = Prefetcher(produce, torch.device("cpu"), num_threads=1)
    torch.set_num_threads(2)
    try:
        assert prefetcher.next() == 1
        with pytest.raises(RuntimeError, match="pool blew up"):
            prefetcher.next()
        assert torch.get_num_threads() == 2, "the generation thread changed the training thread's setting"
    finally:
        prefetcher.close()
        torch.set_num_threads(before)
    assert seen[0][0].startswith("pfm-prefetch") and seen[0][1] == 1


def test_bad_prefetch_threads_is_named() -> None:
    with pytest.raises(ValueError, match=r"data\.prefetch_threads=0"):
        _module(prefetch_threads=0)


def test_batches_per_advance_draws_other_crops_of_the_same_states_and_resumes() -> None:
    """``batches_per_advance=3``: the pools step once per 3 batches, each batch differs, and a state saved in
    the middle of a group resumes the same stream; 1 (the default) is the stream of one draw per step."""
    plain, grouped = _module(prefetch=False), _module(prefetch=False, batches_per_advance=3)
    plain.setup()
    grouped.setup()
    ones = [plain.next_batch()["input"] for _ in range(2)]
    batches = []
    for _ in range(7):
        batches.append(grouped.next_batch()["input"])
        if len(batches) == 1:
            assert torch.equal(batches[0], ones[0]), "the first draw after an advance is the one-draw stream"
    assert {pool.step for pool in grouped.pools} == {3}  # advanced before batches 1, 4 and 7
    assert not any(torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1 :])
    assert not torch.equal(batches[1], ones[1]), "batch 2 is drawn from the first state, not a new one"
    # a state saved after batch 5 (the second of its group) resumes with batches 6 and 7
    again = _module(prefetch=False, batches_per_advance=3)
    again.setup()
    for _ in range(5):
        again.next_batch()
    state = again.state_dict()
    assert {pool["num_draws"] for pool in state["pools"].values()} == {2}
    resumed = _module(prefetch=False, batches_per_advance=3)
    resumed.load_state_dict(state)
    resumed.setup()
    for want in batches[5:]:
        assert torch.equal(resumed.next_batch()["input"], want)


def test_batches_per_advance_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batches_per_advance=0"):
        _module(batches_per_advance=0)
