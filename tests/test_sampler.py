"""ChunkAwareSampler: coverage, determinism, chunk locality, weighting, DDP sharding, resume."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cmkd_pipe.pipeline.training.sampler import ChunkAwareSampler


def chunk_switches(order: np.ndarray, chunk_size: int) -> int:
    chunks = np.asarray(order) // chunk_size
    return int(np.count_nonzero(chunks[1:] != chunks[:-1]))


def test_unweighted_epoch_yields_every_item_once():
    sampler = ChunkAwareSampler(103, 10, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(103))
        assert len(sampler) == 103


def test_subset_indices_only_and_all_of_them():
    indices = np.arange(5, 200, 3)
    order = list(ChunkAwareSampler(200, 16, indices=indices))
    assert sorted(order) == indices.tolist()


def test_order_is_deterministic_per_seed_and_epoch():
    a, b = ChunkAwareSampler(500, 20, seed=1), ChunkAwareSampler(500, 20, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(ChunkAwareSampler(500, 20, seed=2)) != list(b)


def test_no_shuffle_keeps_store_order():
    indices = np.array([7, 3, 9, 1])
    assert list(ChunkAwareSampler(10, 2, indices=indices, shuffle=False)) == [7, 3, 9, 1]


def test_single_chunk_windows_read_each_chunk_contiguously():
    n, chunk = 1000, 50
    order = ChunkAwareSampler(n, chunk, window_chunks=1, seed=0).global_order()
    assert chunk_switches(order, chunk) == n // chunk - 1
    random_order = np.random.default_rng(0).permutation(n)
    assert chunk_switches(random_order, chunk) > 0.8 * n
    assert order[:chunk].tolist() != sorted(order[:chunk].tolist())  # shuffled inside the chunk


def test_windowed_order_touches_few_chunks_per_batch():
    n, chunk, window, batch = 1000, 50, 4, 16
    order = ChunkAwareSampler(n, chunk, window_chunks=window, seed=0).global_order()
    random_order = np.random.default_rng(0).permutation(n)

    def chunks_per_batch(o):
        return [len(np.unique(o[i:i + batch] // chunk)) for i in range(0, n, batch)]

    ours, rand = chunks_per_batch(order), chunks_per_batch(random_order)
    assert max(ours) <= 2 * window  # a batch spans at most two windows
    assert np.mean(ours) < 0.5 * np.mean(rand)
    # every window of `window` chunks is read as one contiguous block
    for start in range(0, n, window * chunk):
        assert len(np.unique(order[start:start + window * chunk] // chunk)) == window


def test_weighted_frequencies_follow_weights():
    n = 40
    weights = np.arange(n, dtype=float)  # item 0 has weight 0
    sampler = ChunkAwareSampler(n, 8, weights=weights, epoch_len=40000, seed=5)
    counts = np.bincount(list(sampler), minlength=n)
    expected = 40000 * weights / weights.sum()
    assert counts[0] == 0
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 1)
    assert len(sampler) == 40000


def test_weighted_order_is_chunk_local():
    n, chunk = 2000, 100
    weights = np.random.default_rng(0).random(n)
    order = ChunkAwareSampler(n, chunk, weights=weights, window_chunks=1, seed=0).global_order()
    assert len(order) == n
    assert chunk_switches(order, chunk) == len(np.unique(order // chunk)) - 1


def test_weighted_subset_draws_only_from_subset():
    indices = np.arange(100, 200)
    weights = np.ones(100)
    order = list(ChunkAwareSampler(300, 16, indices=indices, weights=weights, epoch_len=500))
    assert len(order) == 500 and set(order) <= set(indices.tolist())


def test_longer_unweighted_epoch_chains_full_passes():
    order = list(ChunkAwareSampler(30, 4, epoch_len=75))
    counts = np.bincount(order, minlength=30)
    assert len(order) == 75 and counts.min() == 2 and counts.max() == 3
    assert sorted(order[:30]) == list(range(30))


@pytest.mark.parametrize("weighted", [False, True])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(weighted):
    n, world = 100, 3
    weights = np.linspace(1, 2, n) if weighted else None
    samplers = [ChunkAwareSampler(n, 8, weights=weights, seed=4, rank=r, world_size=world) for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    shards = [list(s) for s in samplers]
    assert all(len(shard) == len(s) == 34 for shard, s in zip(shards, samplers))
    interleaved = [shards[r][i] for i in range(34) for r in range(world)]
    full = samplers[0].global_order()
    assert interleaved[:n] == full.tolist()  # positions are disjoint and their union is the epoch
    assert interleaved[n:] == full[:2].tolist()  # padded by repeating the head
    single = ChunkAwareSampler(n, 8, weights=weights, seed=4)
    single.set_epoch(2)
    assert list(single) == full.tolist()  # the global order does not depend on the rank count


def test_ddp_drop_last_truncates_to_equal_shards():
    samplers = [ChunkAwareSampler(100, 8, rank=r, world_size=3, drop_last=True) for r in range(3)]
    shards = [list(s) for s in samplers]
    assert [len(s) for s in shards] == [33, 33, 33]
    assert sorted(sum(shards, [])) == sorted(samplers[0].global_order()[:99].tolist())


@pytest.mark.parametrize("weighted", [False, True])
def test_resume_mid_epoch_yields_exactly_the_rest(weighted):
    weights = np.random.default_rng(1).random(90) if weighted else None
    first = ChunkAwareSampler(90, 7, weights=weights, seed=9, rank=1, world_size=2)
    first.set_epoch(3)
    expected = list(first.rank_order())
    iterator = iter(first)
    consumed = [next(iterator) for _ in range(17)]
    state = first.state_dict()
    assert state["epoch"] == 3 and state["position"] == 17 and state["seed"] == 9

    resumed = ChunkAwareSampler(90, 7, weights=weights, seed=0, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # an engine calling set_epoch for the resumed epoch keeps the position
    rest = list(resumed)
    assert consumed + rest == expected
    resumed.set_epoch(4)  # the next epoch starts from its beginning
    assert len(list(resumed)) == len(resumed)


def test_state_dict_uses_the_loops_count_when_given():
    sampler = ChunkAwareSampler(64, 8, seed=2)
    order = list(sampler)  # a DataLoader may have fetched everything already
    state = sampler.state_dict(consumed=24)
    resumed = ChunkAwareSampler(64, 8)
    resumed.load_state_dict(state)
    assert list(resumed) == order[24:]


def test_resume_refuses_a_different_world_size():
    state = ChunkAwareSampler(64, 8, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        ChunkAwareSampler(64, 8, rank=0, world_size=4).load_state_dict(state)


def test_works_as_dataloader_sampler():
    data = torch.arange(50)
    loader = DataLoader(data, batch_size=8, sampler=ChunkAwareSampler(50, 5))
    assert sorted(torch.cat(list(loader)).tolist()) == list(range(50))


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights=np.ones(5)), "one entry per sampled index"),
    (dict(weights=-np.ones(20)), ">= 0"),
    (dict(indices=[0, 25]), r"\[0, 20\)"),
    (dict(indices=[1, 1]), "duplicates"),
    (dict(weights=np.ones(20), shuffle=False), "shuffle=True"),
    (dict(rank=2, world_size=2), "rank"),
    (dict(window_chunks=0), "window_chunks"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChunkAwareSampler(20, 4, **kwargs)


def test_store_order_mixes_classes_of_a_class_sorted_manifest():
    """A manifest listed class by class (folder corpora, the demo) would give chunk-local batches of one or
    two classes; the feature store's row order (Manifest.in_store_order) makes each batch a random sample."""
    import pandas as pd

    from cmkd_pipe.data_manifests.manifest import Manifest, Vocabulary

    classes, per_class, chunk, batch = 12, 80, 32, 32
    labels = [f"k{c}" for c in range(classes) for _ in range(per_class)]
    clips = pd.DataFrame({"clip_id": [f"{l}-{i}" for i, l in enumerate(labels)], "path": "x.wav",
                          "labels": [[l] for l in labels]})
    ids = [f"k{c}" for c in range(classes)]
    manifest = Manifest("sorted", clips, Vocabulary(ids, ids), False, ".")
    for order, expected in ((manifest, (1, 5)), (manifest.in_store_order(), (8, 12))):
        store_labels = np.array([ls[0] for ls in order.clips["labels"]])
        items = list(ChunkAwareSampler(len(store_labels), chunk, seed=0))
        per_batch = [len(set(store_labels[items[i:i + batch]])) for i in range(0, len(items), batch)]
        assert expected[0] <= np.median(per_batch) <= expected[1], per_batch
    again = manifest.in_store_order()
    assert again.clips["clip_id"].tolist() == manifest.in_store_order().clips["clip_id"].tolist()
    assert sorted(again.clips["clip_id"]) == sorted(manifest.clips["clip_id"])
