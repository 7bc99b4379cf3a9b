"""The README's FSD50K path on a tiny fake FSD50K tree in the published layout:

    cmkd-pipe run --dataset fsd50k --data-root ... --run-dir RUN --until main/logits-ast --set ...
        (manifest → features → AST teacher → its logit store: the stages `make teacher-logits` runs
        for the AST, without the Make layer and the CNN teacher, which would triple the run time)
    cmkd-pipe train-student --logits RUN/main/logits-ast/logits.zarr
        (the design card's command as written: features, recipe and student family from provenance)

16 multi-label clips (8 train, 4 val, 4 eval; 4 classes), the fsd50k profile's real front-end
(128 bins x 1024 frames) and the fsd50k preset shrunk through --set: one epoch, batch 4,
EfficientNet-B0, a one-block AST with stride 16, no downloads. The chunked stages run synchronously
(--scheduler synchronous: no worker start-up in each stage's process).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cmkd_pipe.cli.app import app
from fsd50k_tree import TINY, VOCABULARY, clip_classes, write_fsd50k
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.logits_store import LogitsStore

pytestmark = pytest.mark.slow  # end to end: stage subprocesses on the fsd50k front-end (128 x 1024)

@pytest.fixture(scope="module")
def flow(tmp_path_factory, scheduler) -> dict:
    root = tmp_path_factory.mktemp("fsd50k")
    write_fsd50k(root / "FSD50K")
    run = root / "run"
    result = CliRunner().invoke(app, ["run", "--dataset", "fsd50k", "--data-root", str(root / "FSD50K"), "--run-dir",
                                      str(run), "--until", "main/logits-ast", "--scheduler", scheduler,
                                      *[f"--set={s}" for s in TINY]])
    assert result.exit_code == 0, result.output
    return {"run": run, "output": result.stdout}


def test_run_until_the_ast_logits_builds_the_fsd50k_stages(flow):
    run = flow["run"]
    done = sorted(str(p.parent.relative_to(run)) for p in run.rglob("stage.json"))
    assert done == ["features", "main/logits-ast", "main/train-ast", "manifest"]
    assert "✓ main/logits-ast" in flow["output"]

    features = FeatureStore(run / "features" / "features.zarr")
    assert (features.feature_config.num_mel_bins, features.feature_config.target_frames) == (128, 1024)
    assert features.multilabel and features.ok.all()
    assert [v["id"] for v in features.vocabulary] == [mid for _, mid in VOCABULARY]
    assert [v["name"] for v in features.vocabulary] == [name for name, _ in VOCABULARY]
    assert {s: int((features.splits == s).sum()) for s in ("train", "val", "eval")} == {"train": 8, "val": 4,
                                                                                       "eval": 4}
    ids = [f"{'eval' if i >= 12 else 'dev'}/{64000 + i}" for i in range(16)]
    assert sorted(features.clip_ids) == ids  # the store lays clips out in a seeded random order
    expected = np.zeros((16, 4), dtype=np.uint8)
    for row, clip_id in enumerate(features.clip_ids):
        expected[row, clip_classes(int(clip_id.split("/")[1]) - 64000)] = 1
    np.testing.assert_array_equal(features.targets, expected)

    logits = LogitsStore(run / "main" / "logits-ast" / "logits.zarr")
    logits.check_matches(features)
    assert logits.logits.shape == (16, 1, 4) and logits.attrs["multilabel"] is True
    assert logits.attrs["teacher"]["arch"] == "ast"
    assert logits.attrs["teacher"]["checkpoint"] == str((run / "main" / "train-ast" / "final.pt").resolve())
    assert logits.attrs["teacher"]["normalization"]["mean"] == -4.6476  # the preset's published FSD50K stats
    assert np.isfinite(np.asarray(logits.logits[:])).all()
    trained = json.loads((run / "main" / "train-ast" / "results.json").read_text())
    assert trained["metric"] == "mAP" and trained["multilabel"] is True


def test_cnn_student_from_the_ast_logits_reports_map(flow):
    run = flow["run"]
    store = run / "main" / "logits-ast" / "logits.zarr"
    result = CliRunner().invoke(app, ["train-student", "--logits", str(store)])  # as the design card writes it
    assert result.exit_code == 0, result.output
    out = run / "main" / "logits-ast" / "student-cnn-from-ast"
    first = result.stdout.splitlines()[0]
    assert first.startswith("student cnn ← ast teacher; features ") and "preset fsd50k" in first
    assert f"out {out}" in first and all(item in first for item in TINY)
    assert f"cnn on {(run / 'features' / 'features.zarr').resolve()}: test mAP last " in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "mAP" and results["multilabel"] is True and results["n_test"] == 4
    assert 0.0 <= results["last"]["mAP"] <= 1.0 and results["last"]["n_classes_without_positives"] == 0
    assert results["teacher"]["arch"] == "ast" and results["run"]["role"] == "student"
    predictions = np.load(out / "test_predictions.npz")
    assert predictions["scores"].shape == predictions["teacher_scores"].shape == (4, 4)
    assert sorted(predictions["clip_ids"]) == [f"eval/{64000 + i}" for i in range(12, 16)]
