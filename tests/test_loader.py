"""The training input path (pipeline/training/loader.py) and the view parameters kept in the logits store:
the same batches from 0 and 2 DataLoader workers (across epochs, workers kept), a run with workers equal to
one without, an exact resume mid-epoch with workers, stored view parameters equal to the drawn ones, and
a logits store written before they were kept still teaching the same inputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd_pipe.pipeline.augment import ViewSpec, ViewTable, view_params
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.integrity import reseal
from cmkd_pipe.pipeline.stores.logits_store import LogitsStore
from cmkd_pipe.pipeline.training.engine import Trainer
from cmkd_pipe.pipeline.training.loader import Step, StepBatch, StepDataset, StepLoader, loader_workers
from cmkd_pipe.pipeline.training.teachers import AugmentPlan, CachedTeacher, NoTeacher
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.teacher_logits import run_teacher_logits
from cmkd_pipe.stages.train import train

from conftest import save_random_model

CONFIG = FeatureConfig(num_mel_bins=32, target_frames=64)  # the smoke preset's front-end
CHUNK = 8
TINY_AST = {"arch": "ast", "size": "custom", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch": 16,
            "fstride": 16, "tstride": 16}
VIEWS = {"views": 3, "view_seed": 3, "freq_mask": 8, "time_mask": 16, "mixup_rate": 0.6, "time_shift": 5}
AUGMENT = {"freq_mask": 6, "time_mask": 12, "mixup_rate": 0.5, "mixup_alpha": 10.0, "mixup_mode": "power",
           "time_shift": 4, "mask_fill": "zero"}
RUN = ["data.train=train", "data.val=val", "data.test=eval", "train.epochs=2", "average.wa_start_epoch=null",
       "average.wa_end_epoch=null", "train.deterministic=true", "augment.mixup_rate=0.5", "augment.time_shift=4"]


def clips(make_tone) -> list[dict]:
    return [{"clip_id": f"c{i:02d}", "labels": ["abc"[i % 3]], "split": ("train", "train", "val", "eval")[i % 4],
             "audio": make_tone(300.0 + 150 * i, 0.4 + 0.01 * i, 16000, noise=0.05, seed=i)} for i in range(48)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus_writer, make_tone, scheduler) -> dict:
    """Features of 48 tones, a random teacher's 3-view logits store, and the same store as written before
    view parameters were kept (the arrays removed, the chunk records resealed)."""
    root = tmp_path_factory.mktemp("loader")
    features = root / "features.zarr"
    run_features(corpus_writer(root / "corpus", clips(make_tone)), features, config=CONFIG, chunk_clips=CHUNK,
                 scheduler=scheduler, progress=False)
    store = FeatureStore(features)
    save_random_model(root / "teacher.pt", store, TINY_AST)
    logits = root / "logits.zarr"
    run_teacher_logits(features, root / "teacher.pt", logits, **VIEWS, batch_size=8, scheduler=scheduler,
                       progress=False)
    old = root / "old-logits.zarr"
    shutil.copytree(logits, old)
    for name in ("view_bands", "view_partner", "view_lam"):
        shutil.rmtree(old / name)
    reseal(old)
    return {"root": root, "features": features, "store": store, "logits": logits, "old": old}


def steps(store: FeatureStore, epochs: int = 2, batch: int = 8) -> list[list[Step]]:
    rng = np.random.default_rng(0)
    rows = store.select("train")
    return [[Step(epoch, k, rng.permutation(rows)[:batch]) for k in range(3)] for epoch in range(epochs)]


def assert_same_batches(a: list[StepBatch], b: list[StepBatch]) -> None:
    assert len(a) == len(b)
    for one, other in zip(a, b):
        for name in ("rows", "source", "valid", "y", "teacher_logits", "teacher_perm", "teacher_lam"):
            first, second = getattr(one, name), getattr(other, name)
            assert (first is None) == (second is None), name
            assert first is None or (first.dtype == second.dtype and torch.equal(first, second)), name
        for name in ("partner", "lam", "bands", "shift"):
            assert torch.equal(getattr(one.recipe, name), getattr(other.recipe, name)), name


@pytest.mark.parametrize("teaching", ["plain", "cached"])
def test_zero_and_two_workers_give_the_same_batches_every_epoch(world, teaching):
    store = world["store"]
    if teaching == "plain":
        source = NoTeacher(store, AUGMENT, torch.device("cpu"))
    else:
        source = CachedTeacher(store, AUGMENT, torch.device("cpu"), world["logits"], lambda z: torch.softmax(z, -1))
    got = {}
    for workers in (0, 2):
        dataset = StepDataset(world["features"], source.plan(), seed=5, rank=1, store=store)
        loader = StepLoader(dataset, workers=workers, prefetch=2)
        got[workers] = [list(loader(epoch)) for epoch in steps(store)]  # the workers persist across epochs
        loader.close()
    for zero, two in zip(got[0], got[2]):
        assert_same_batches(zero, two)
    first = got[0][0][0]
    assert first.source.dtype == torch.float16  # rows travel as stored
    if teaching == "cached":
        assert len(first.source) > len(first.rows)  # view partners travel with the batch
    assert not torch.equal(got[0][0][0].recipe.bands, got[0][1][0].recipe.bands)  # epochs draw anew


def test_loader_settings_are_checked_and_resolved():
    assert loader_workers(None, torch.device("cpu")) == 0 and loader_workers(3, torch.device("cpu")) == 3
    assert 1 <= loader_workers(None, torch.device("cuda")) <= 4
    with pytest.raises(ValueError, match="loader_workers must be >= 0"):
        StepLoader(StepDataset(Path("x"), AugmentPlan(AUGMENT), seed=0, rank=0), workers=-1)


def test_a_run_with_workers_equals_one_without_and_records_its_data_share(world):
    root = world["root"]
    runs = {workers: train(world["features"], "ast", root / f"run-{workers}", preset="smoke",
                           overrides=[*RUN, f"data.loader_workers={workers}"], logits=str(world["logits"]),
                           progress=False) for workers in (0, 2)}
    assert runs[0]["last"] == runs[2]["last"] and runs[0]["best"] == runs[2]["best"]
    a = torch.load(root / "run-0" / "checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(root / "run-2" / "checkpoints/last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [line for line in (root / "run-2" / "metrics.csv").read_text().splitlines()]
    header = metrics[0].split(",")
    share = [float(row.split(",")[header.index("data_fraction")]) for row in metrics[1:]]
    assert len(share) == 2 and all(0.0 < s < 1.0 for s in share)


def test_resume_mid_epoch_with_workers_is_exact(world, monkeypatch):
    """A run interrupted right after its first mid-epoch state, resumed with 2 workers (and another prefetch:
    loader settings are not part of what a resume must match), ends with the weights of an uninterrupted
    run without workers."""
    root = world["root"]
    every = [*RUN, "train.checkpoint_every_steps=1"]
    train(world["features"], "ast", root / "whole", preset="smoke", overrides=[*every, "data.loader_workers=0"],
          logits=str(world["logits"]), progress=False)
    save = Trainer.save_state

    def interrupted(self, position=0):
        save(self, position)
        if position == 2 * self.batch_size and self.epoch == 1:
            raise KeyboardInterrupt("killed mid-epoch")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save_state", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(world["features"], "ast", root / "resumed", preset="smoke",
                  overrides=[*every, "data.loader_workers=2"], logits=str(world["logits"]), progress=False)
    state = torch.load(root / "resumed" / "checkpoints/last.pt", weights_only=False)
    assert (state["epoch"], state["sampler"]["position"]) == (1, 16)
    train(world["features"], "ast", root / "resumed", preset="smoke",
          overrides=[*every, "data.loader_workers=2", "data.prefetch=3"], logits=str(world["logits"]), resume=True,
          progress=False)
    a = torch.load(root / "whole" / "checkpoints/last.pt", weights_only=False)
    b = torch.load(root / "resumed" / "checkpoints/last.pt", weights_only=False)
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_stored_view_parameters_equal_the_drawn_ones(world):
    store, logits = world["store"], LogitsStore(world["logits"])
    assert logits.has_view_params
    spec = ViewSpec.from_dict(logits.attrs["views"])
    rows = np.repeat(np.arange(len(store)), spec.n_views)
    views = np.tile(np.arange(spec.n_views), len(store))
    stored = ViewTable(*logits.view_params(rows, views))
    pools = {s: store.clip_ids[store.ok & (store.splits == s)].tolist() for s in set(store.splits.tolist())}
    row_of = {clip: row for row, clip in enumerate(store.clip_ids)}
    drawn = ViewTable.from_params([view_params(spec, str(store.clip_ids[r]), int(v), 64, 32, pools[store.splits[r]])
                                   for r, v in zip(rows, views)], row_of)
    np.testing.assert_array_equal(stored.bands, drawn.bands)
    np.testing.assert_array_equal(stored.partner, drawn.partner)
    np.testing.assert_array_equal(stored.lam, drawn.lam)
    assert (stored.partner >= 0).any() and (stored.bands[:, 4] != 0).any()  # mixup partners and shifts are kept
    assert (stored.partner[views == 0] == -1).all() and (stored.lam[views == 0] == 1).all()  # view 0: clean


def test_a_store_without_view_parameters_teaches_the_same_inputs(world):
    """An old store (no view arrays) still loads; its views are drawn again and give the same step input."""
    store = world["store"]
    old = LogitsStore(world["old"])
    assert not old.has_view_params
    with pytest.raises(ValueError, match="written before view parameters were stored"):
        old.view_params(np.arange(2), np.ones(2, dtype=np.int64))
    probs = lambda z: torch.softmax(z, -1)  # noqa: E731
    got = []
    for path in (world["logits"], world["old"]):
        teacher = CachedTeacher(store, AUGMENT, torch.device("cpu"), path, probs)
        assert (teacher.views.stored is None) == (path == world["old"])
        batch = teacher.plan().prepare(store, ChunkCache(store.fbank, store.chunk_clips), store.select("train")[:12],
                                       torch.Generator().manual_seed(11))
        got.append((batch, teacher.inputs(batch)))
    assert_same_batches([got[0][0]], [got[1][0]])
    for name in ("x", "y", "teacher_p"):
        assert torch.equal(getattr(got[0][1], name), getattr(got[1][1], name)), name
