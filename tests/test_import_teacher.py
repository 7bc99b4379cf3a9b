"""Published models as teachers: `import-teacher` -> `teacher-logits` -> `train-student` through a mid map.

The published model is a small random Hugging Face ASTForAudioClassification with AudioSet's 527 outputs,
whose id2label are AudioSet mids (three of them FSD50K's Bark, Meow, Crash; Drip is missing), saved with
save_pretrained; the same weights rewritten as an official YuanGongND/ast release (tests/ast_oracle.py)
stand for the official format. The corpus is the tiny FSD50K tree (tests/fsd50k_tree.py) at 128 mel bins x
128 frames. The Hugging Face model itself is the oracle for the imported teacher's logits.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file
from typer.testing import CliRunner

from ast_oracle import hf_to_official
from cmkd_pipe.cli.app import app
from faults import REPO, cli, stage_env
from cmkd_pipe.data_manifests.fsd50k import build_fsd50k
from fsd50k_tree import TINY, VOCABULARY, write_fsd50k
from cmkd_pipe.pipeline.config import PUBLISHED_STATS, FeatureConfig, Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.label_map import LabelMap, map_labels, name_key
from cmkd_pipe.pipeline.losses import CMKDLoss
from cmkd_pipe.pipeline.models.checkpoint import file_sha256, load_checkpoint
from cmkd_pipe.pipeline.stores.chunks import StoreError
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.logits_store import LogitsStore
from cmkd_pipe.stages.evaluate import evaluate_checkpoint
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.graph import RunOptions, make_rules, plan, status_rows
from cmkd_pipe.stages.import_teacher import run_import_teacher
from cmkd_pipe.stages.teacher_logits import inspect_logits, run_teacher_logits
from cmkd_pipe.stages.train import train

transformers = pytest.importorskip("transformers")

N_AUDIOSET = 527
EPS = 0.05  # an unusual layer_norm_eps, so a model built with another eps gives other logits
PLACES = {"/m/05tny_": 3, "/m/07qrkrw": 100, "/m/0_ksk": 526}  # where FSD50K's mids sit among the 527
MIDS = [f"/m/x{i:04d}" for i in range(N_AUDIOSET)]
for mid, index in PLACES.items():
    MIDS[index] = mid
COLUMNS = [3, 100, 526]  # Bark, Meow, Crash; Drip (/m/07pqc89) has no teacher label
HF_SMALL = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "max_length": 128, "num_mel_bins": 128, "patch_size": 16, "frequency_stride": 16, "time_stride": 16,
            "layer_norm_eps": EPS}
STUDENT = [*TINY, "features.target_frames=128"]
VENV = Path(sys.executable).parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, scheduler):
    """The tiny FSD50K tree, its manifest and a feature store at 128 bins x 128 frames."""
    root = tmp_path_factory.mktemp("fsd50k")
    write_fsd50k(root / "FSD50K")
    build_fsd50k(root / "FSD50K").save(root / "manifest")
    run_features(root / "manifest", root / "features.zarr", config=FeatureConfig(target_frames=128), chunk_clips=8,
                 scheduler=scheduler, progress=False)
    return root, FeatureStore(root / "features.zarr")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(HF folder, official .pth, labels CSV, the HF model): one random AudioSet-527 AST in both formats."""
    folder = tmp_path_factory.mktemp("hf_ast")
    config = transformers.ASTConfig(**HF_SMALL, num_labels=N_AUDIOSET, id2label=dict(enumerate(MIDS)),
                                    label2id={mid: i for i, mid in enumerate(MIDS)})
    model = transformers.ASTForAudioClassification(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():  # HF starts tokens and positions at zero
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    official = folder.parent / "audioset_16_16_0.0000.pth"
    torch.save(hf_to_official(load_file(folder / "model.safetensors")), official)
    labels = folder.parent / "class_labels_indices.csv"
    with open(labels, "w", newline="") as handle:
        csv.writer(handle).writerows([("index", "mid", "display_name"),
                                      *((i, mid, f"label {i}") for i, mid in enumerate(MIDS))])
    return folder, official, labels, model


def hf_logits(model, store: FeatureStore, norm: Normalization, rows=slice(None)) -> torch.Tensor:
    """The oracle: the Hugging Face model's logits on the store's normalised fbank."""
    x = normalize(torch.from_numpy(np.asarray(store.fbank[rows], dtype=np.float32)), norm)
    with torch.no_grad():
        return model(x).logits


# ------------------------------------------------------------------------------------------ import


def test_hugging_face_teacher_keeps_its_head_eps_and_gives_the_hugging_face_logits(corpus, published, tmp_path):
    root, store = corpus
    folder, _, _, hf = published
    summary = run_import_teacher(folder, store.path, tmp_path / "teacher.pt", allow_unmapped=True)
    model, meta = load_checkpoint(tmp_path / "teacher.pt")
    assert summary["format"] == "ast-hf" and summary["outputs"] == N_AUDIOSET
    assert meta["model_config"]["norm_eps"] == meta["model_config"]["head_norm_eps"] == EPS  # from config.json
    assert model.head.norm.eps == EPS and model.blocks[0].norm1.eps == EPS
    assert [r["id"] for r in meta["vocabulary"]] == MIDS
    mean, std = PUBLISHED_STATS["audioset"]
    assert meta["normalization"] == {"mean": mean, "std": std, "divisor": 2.0}
    imported = meta["extra"]["imported"]
    assert imported["sha256"] == file_sha256(folder / "model.safetensors")
    assert imported["source"] == str((folder / "model.safetensors").resolve())
    assert imported["config_sha256"] == file_sha256(folder / "config.json")
    assert "AudioSet" in imported["normalization"] and imported["labels"] == "config.json id2label"
    assert meta["label_map"]["teacher_columns"] == COLUMNS and meta["label_map"]["corpus_classes"] == [0, 1, 2]

    norm = Normalization.from_dict(meta["normalization"])
    x = normalize(torch.from_numpy(np.asarray(store.fbank[:], dtype=np.float32)), norm)
    with torch.no_grad():
        ours, oracle = model.eval()(x), hf_logits(hf, store, norm)
        assert torch.allclose(ours, oracle, atol=1e-5)
        model.set_norm_eps(1e-6, 1e-5)  # yesterday's eps: the logits visibly differ, so the check above can fail
        assert (model(x) - oracle).abs().max() > 1e-3


def test_unmapped_classes_are_refused_with_their_list_and_accepted_when_allowed(corpus, published, tmp_path):
    root, store = corpus
    folder = published[0]
    result = CliRunner().invoke(app, ["import-teacher", str(folder), "--features", str(store.path), "--out",
                                      str(tmp_path / "t.pt")])
    assert result.exit_code == 1
    error = result.stderr.strip()
    assert "\n" not in error and error.startswith("error: ")
    assert "1 of 4 corpus classes have no teacher label: /m/07pqc89 (Drip); pass --allow-unmapped" in error
    assert not (tmp_path / "t.pt").exists()
    result = CliRunner().invoke(app, ["import-teacher", str(folder), "--features", str(store.path), "--out",
                                      str(tmp_path / "t.pt"), "--allow-unmapped"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mapped"] == "3 of 4 corpus classes, by mid" and summary["unmapped"] == ["/m/07pqc89"]


def test_a_teacher_covering_every_class_needs_no_flag(tmp_path_factory, published, scheduler, tmp_path):
    root = tmp_path_factory.mktemp("fsd50k_three")
    write_fsd50k(root / "FSD50K", VOCABULARY[:3])
    build_fsd50k(root / "FSD50K").save(root / "manifest")
    run_features(root / "manifest", root / "f.zarr", config=FeatureConfig(target_frames=64), chunk_clips=8,
                 scheduler=scheduler, progress=False)
    summary = run_import_teacher(published[0], root / "f.zarr", tmp_path / "t.pt")
    assert summary["mapped"] == "3 of 3 corpus classes, by mid" and summary["unmapped"] == []
    model, meta = load_checkpoint(tmp_path / "t.pt")
    assert model.input_frames == 64 and model.grid == (8, 4)  # positions adapted from 128 frames (8 x 8)


def test_official_release_needs_labels_and_heads_and_gives_the_same_logits(corpus, published, tmp_path):
    root, store = corpus
    folder, official, labels, hf = published
    out = tmp_path / "official.pt"
    with pytest.raises(ValueError, match="64 patches are not a published AST grid .* pass --set model.ast.fstride"):
        run_import_teacher(official, store.path, out, allow_unmapped=True)
    strides = ["model.ast.fstride=16", "model.ast.tstride=16"]
    with pytest.raises(ValueError, match="cannot tell the number of attention heads .* pass --set "
                                         "model.ast.num_heads=N"):
        run_import_teacher(official, store.path, out, overrides=strides, allow_unmapped=True)
    settings = [*strides, "model.ast.num_heads=2", f"model.ast.norm_eps={EPS}", f"model.ast.head_norm_eps={EPS}"]
    with pytest.raises(ValueError, match="does not name its 527 output labels; pass --labels"):
        run_import_teacher(official, store.path, out, overrides=settings, allow_unmapped=True)
    summary = run_import_teacher(official, store.path, out, overrides=settings, labels=labels, allow_unmapped=True)
    assert summary["format"] == "ast-official" and summary["labels"] == f"--labels {labels.resolve()}"
    model, meta = load_checkpoint(out)
    assert meta["label_map"]["teacher_columns"] == COLUMNS and meta["extra"]["imported"]["sha256"] == \
        file_sha256(official)
    norm = Normalization.from_dict(meta["normalization"])
    x = normalize(torch.from_numpy(np.asarray(store.fbank[:], dtype=np.float32)), norm)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), hf_logits(hf, store, norm), atol=1e-5)
    with pytest.raises(ValueError, match=r"holds ast weights \(ast-official\), not --modelcnn"):
        run_import_teacher(official, store.path, out, family="cnn", overrides=settings, labels=labels)


def test_front_end_and_label_count_mismatches_are_one_line_errors(tmp_path_factory, published, scheduler,
                                                                   corpus, tmp_path):
    root, store = corpus
    folder, official, labels, _ = published
    short = tmp_path / "short.csv"
    short.write_text("index,mid,display_name\n0,/m/05tny_,Bark\n")
    with pytest.raises(ValueError, match="1 labels, but .* has 527 outputs"):
        run_import_teacher(folder, store.path, tmp_path / "t.pt", labels=short)
    other = tmp_path_factory.mktemp("bins64")
    build_fsd50k(root / "FSD50K").save(other / "manifest")
    run_features(other / "manifest", other / "f.zarr", config=FeatureConfig(num_mel_bins=64, target_frames=64),
                 chunk_clips=8, scheduler=scheduler, progress=False)
    with pytest.raises(ValueError, match=r"features do not match .*num_mel_bins 64 \(the weights expect 128\)"):
        run_import_teacher(folder, other / "f.zarr", tmp_path / "t.pt", allow_unmapped=True)
    with pytest.raises(ValueError, match="unknown key optim"):
        run_import_teacher(folder, store.path, tmp_path / "t.pt", overrides=["optim.lr=1"])


def test_psla_attention_checkpoint_imports_with_the_psla_statistics(corpus, tmp_path):
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    root, store = corpus
    torch.manual_seed(0)
    effnet = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0", in_channels=1)
    sd = {f"module.effnet.{k}": v for k, v in effnet.state_dict().items() if not k.startswith("_fc.")}
    for i in range(2):
        for branch in ("att", "cla"):
            sd[f"module.attention.{branch}.{i}.weight"] = torch.randn(N_AUDIOSET, 1280, 1, 1)
            sd[f"module.attention.{branch}.{i}.bias"] = torch.randn(N_AUDIOSET)
    sd["module.attention.head_weight"] = torch.rand(2)
    torch.save(sd, tmp_path / "as_mdl_0.pth")
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},{m},x\n" for i, m in enumerate(MIDS)))
    summary = run_import_teacher(tmp_path / "as_mdl_0.pth", store.path, tmp_path / "psla.pt", labels=labels,
                                 allow_unmapped=True)
    model, meta = load_checkpoint(tmp_path / "psla.pt")
    assert summary["family"] == "cnn" and meta["model_config"]["variant"] == "tf_efficientnet_b0"
    assert meta["model_config"]["pooling"] == "attention" and meta["model_config"]["heads"] == 2
    mean, std = PUBLISHED_STATS["psla-audioset"]
    assert meta["normalization"] == {"mean": mean, "std": std, "divisor": 1.0}
    assert torch.equal(model.head.head_weight, sd["module.attention.head_weight"])


# ---------------------------------------------------------------------------- logits and students


@pytest.fixture(scope="module")
def mapped_logits(corpus, published, tmp_path_factory, scheduler):
    root, store = corpus
    work = tmp_path_factory.mktemp("mapped")
    run_import_teacher(published[0], store.path, work / "teacher.pt", allow_unmapped=True, preset="fsd50k",
                       preset_overrides=STUDENT)
    run_teacher_logits(store.path, work / "teacher.pt", work / "logits.zarr", views=2, time_mask=16, freq_mask=8,
                       scheduler=scheduler, progress=False)
    return work


def test_the_logits_store_holds_only_the_mapped_classes_and_records_the_map(corpus, published, mapped_logits):
    root, store = corpus
    logits = LogitsStore(mapped_logits / "logits.zarr")
    logits.check_matches(store)
    assert logits.logits.shape == (16, 2, 3) and logits.class_map.tolist() == [0, 1, 2]
    teacher = logits.attrs["teacher"]
    assert teacher["label_map"] == {"by": "mid", "n_outputs": N_AUDIOSET, "teacher_columns": COLUMNS,
                                    "unmapped_classes": [3]}
    assert teacher["imported"]["format"] == "ast-hf"
    norm = Normalization.from_dict(teacher["normalization"])
    oracle = hf_logits(published[3], store, norm)[:, COLUMNS]
    np.testing.assert_allclose(np.asarray(logits.logits[:, 0]), oracle.numpy(), atol=1e-5)
    report = inspect_logits(mapped_logits / "logits.zarr")
    assert report["class_map"] == {"mapped": 3, "classes": 4} and report["metrics"]["eval"]["n_clips"] == 4
    scored = evaluate_checkpoint(mapped_logits / "teacher.pt", store.path, "eval", device="cpu")
    assert scored["mapped_classes"] == 3 and len(scored["per_class_ap"]) == 3 and scored["n_clips"] == 4


def test_a_class_map_that_does_not_fit_the_columns_is_refused(corpus, mapped_logits, tmp_path):
    root, store = corpus
    broken = tmp_path / "logits.zarr"
    shutil.copytree(mapped_logits / "logits.zarr", broken)
    zarr.open_group(str(broken), mode="r+").attrs["class_map"] = [0, 2]
    with pytest.raises(StoreError, match=r"class_map is not 3 increasing class indices below 4"):
        LogitsStore(broken).check_matches(store)


def test_a_student_learns_from_the_mapped_classes(corpus, mapped_logits):
    root, store = corpus
    result = CliRunner().invoke(app, ["train-student", "--logits", str(mapped_logits / "logits.zarr")])
    assert result.exit_code == 0, result.output
    out = mapped_logits / "student-cnn-from-ast"
    assert "preset fsd50k" in result.stdout.splitlines()[0]
    results = json.loads((out / "results.json").read_text())
    assert results["teacher"]["label_map"]["teacher_columns"] == COLUMNS and results["multilabel"] is True
    predictions = np.load(out / "test_predictions.npz")
    assert predictions["scores"].shape == (4, 4) and predictions["teacher_scores"].shape == (4, 3)
    assert predictions["teacher_classes"].tolist() == [0, 1, 2]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= rows[-1]["teacher_agreement"] <= 1.0 and math.isfinite(rows[-1]["train_kd"])


def test_an_online_student_uses_the_same_map(corpus, mapped_logits, tmp_path):
    root, store = corpus
    results = train(store.path, "cnn", tmp_path / "online", preset="fsd50k", overrides=STUDENT,
                    teacher=str(mapped_logits / "teacher.pt"), progress=False)
    predictions = np.load(tmp_path / "online" / "test_predictions.npz")
    assert predictions["teacher_scores"].shape == (4, 3) and results["teacher"]["checkpoint"].endswith("teacher.pt")


@pytest.mark.parametrize("form", ["softmax-kl", "sigmoid-kl", "bce"])
def test_kd_is_computed_on_the_mapped_classes_only(form):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, generator=generator, requires_grad=True)
    teacher_logits = torch.randn(5, 3, generator=generator)
    loss = CMKDLoss(multilabel=True, lam=0.0, form=form, kd_classes=(0, 2, 3))
    total, parts = loss(student, torch.zeros(5, 4), loss.teacher_probs(teacher_logits))
    total.backward()
    assert torch.all(student.grad[:, 1] == 0) and torch.all(student.grad[:, [0, 2, 3]].abs().sum(0) > 0)
    z, p = student[:, [0, 2, 3]].detach(), loss.teacher_probs(teacher_logits)
    if form == "softmax-kl":  # the softmax over the mapped columns, for student and teacher alike
        expected = (p * (p.log() - torch.log_softmax(z, dim=1))).sum(1).mean()
    else:
        expected = torch.nn.functional.binary_cross_entropy_with_logits(z, p)
        if form == "sigmoid-kl":
            expected = expected + (p * p.log() + (1 - p) * (1 - p).log()).mean()
    assert torch.allclose(parts["kd"], expected, atol=1e-6)


# --------------------------------------------------------------------------------------- label map


def test_labels_map_by_mid_or_by_folded_display_name():
    corpus = [{"index": 0, "id": "/m/a", "name": "Accelerating_and_revving_and_vroom"},
              {"index": 1, "id": "/m/b", "name": "Bark"}, {"index": 2, "id": "/m/c", "name": "Gone"}]
    by_mid = map_labels([{"index": 0, "id": "/m/b", "name": "x"}, {"index": 1, "id": "/m/a", "name": "y"}], corpus)
    assert (by_mid.by, by_mid.teacher_columns, by_mid.corpus_classes, by_mid.unmapped) == ("mid", (1, 0), (0, 1),
                                                                                         (2,))
    names = [{"index": 0, "id": "Bark", "name": "Bark"},
             {"index": 1, "id": "Accelerating, revving, vroom", "name": "Accelerating, revving, vroom"}]
    by_name = map_labels(names, corpus)
    assert (by_name.by, by_name.teacher_columns, by_name.corpus_classes) == ("name", (1, 0), (0, 1))
    assert name_key("Accelerating, revving, vroom") == name_key("Accelerating_and_revving_and_vroom")
    assert LabelMap.from_dict(by_mid.to_dict()) == by_mid


def test_unmapped_list_names_the_first_ten_and_counts_the_rest():
    corpus = [{"index": i, "id": f"/m/c{i}", "name": f"class {i}"} for i in range(14)]
    label_map = map_labels([{"index": 0, "id": "/m/c0", "name": "class 0"}], corpus)
    text = label_map.describe_unmapped(corpus)
    assert text.startswith("13 of 14 corpus classes have no teacher label: /m/c1 (class 1), ")
    assert "/m/c10 (class 10)" in text and "/m/c11" not in text and text.endswith("(+3 more)")


# ------------------------------------------------------------------------------------- stage graph


def test_a_published_teacher_replaces_its_family_s_trained_teacher_in_the_graph(published, tmp_path):
    folder, official, labels, _ = published
    run = tmp_path / "run"
    options = RunOptions(dataset="fsd50k", run_dir=run, data_root=tmp_path / "data", overrides=["kd.tau=2.0"],
                         teachers=[str(folder)], allow_unmapped=True)
    stages = {stage.name: stage for stage in plan(options)}
    assert "import-ast" in stages and "main/train-ast" not in stages and "main/train-cnn" in stages
    imported = stages["import-ast"]
    assert imported.kind == "import-teacher" and imported.deps == ["features"]
    assert imported.io["weights"] == str(folder.resolve()) and imported.params["allow_unmapped"] is True
    assert stages["main/logits-ast"].deps == ["import-ast"]
    assert stages["main/logits-ast"].io["checkpoint"] == str(run / "import-ast" / "teacher.pt")
    assert stages["main/student-cnn-from-ast"].deps == ["features", "main/logits-ast"]
    assert stages["main/student-ast-from-cnn"].deps == ["features", "main/logits-cnn"]
    rules = make_rules(options, "cmkd-pipe")
    assert f"--teacher '{folder}' --allow-unmapped" in rules and "stage-import-teacher: " in rules
    other = RunOptions(dataset="fsd50k", run_dir=run, data_root=tmp_path / "data", overrides=["kd.tau=3.0"],
                       teachers=[str(folder)], allow_unmapped=True)
    assert {s.name: s for s in plan(other)}["import-ast"].identity() == imported.identity()  # a KD setting
    pth = {s.name for s in plan(RunOptions(dataset="fsd50k", run_dir=run, data_root=tmp_path / "data",
                                           teachers=[f"ast={official}"], teacher_labels=str(labels)))}
    assert "import-ast" in pth and "main/train-ast" not in pth
    with pytest.raises(ValueError, match="a ast model, but the recipe's families|second ast teacher"):
        plan(RunOptions(dataset="fsd50k", run_dir=run, data_root=tmp_path / "data",
                        teachers=[str(folder), str(official)]))
    with pytest.raises(ValueError, match="is not a Hugging Face AST model"):
        plan(RunOptions(dataset="fsd50k", run_dir=run, data_root=tmp_path / "data", teachers=[str(tmp_path)]))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU Make")
def test_make_teacher_logits_with_a_published_teacher_then_the_card_s_student_command(published, tmp_path,
                                                                                     scheduler):
    """`make teacher-logits DATASET=fsd50k TEACHER=path` imports the AST (no AST training), trains only the CNN
    teacher, writes both logit stores; `cmkd-pipe train-student --logits STORE` then works as written; touching
    the weights makes exactly the import and what follows it stale, naming the file."""
    folder = published[0]
    data, run = tmp_path / "FSD50K", tmp_path / "run"
    write_fsd50k(data)
    env = {k: v for k, v in stage_env(LC_ALL="C").items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    made = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", f"{VENV}/.installed",
                           "teacher-logits", f"VENV={VENV}", "DATASET=fsd50k", f"DATA_ROOT={data}", f"RUN_DIR={run}",
                           f"SET={' '.join(TINY)}", f"SCHEDULER={scheduler}", f"TEACHER={folder}", "ALLOW_UNMAPPED=1"],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    done = sorted(str(p.parent.relative_to(run)) for p in run.rglob("stage.json"))
    assert done == ["features", "import-ast", "main/logits-ast", "main/logits-cnn", "main/train-cnn", "manifest"]
    store = LogitsStore(run / "main" / "logits-ast" / "logits.zarr")
    assert store.logits.shape == (16, 1, 3) and store.class_map.tolist() == [0, 1, 2]
    assert store.attrs["teacher"]["checkpoint"] == str(run / "import-ast" / "teacher.pt")

    student = subprocess.run(cli("train-student", "--logits", str(run / "main" / "logits-ast" / "logits.zarr")),
                             cwd=REPO, env=stage_env(), capture_output=True, text=True, timeout=900)
    assert student.returncode == 0, student.stdout[-3000:] + student.stderr[-3000:]
    assert "student cnn ← ast teacher" in student.stdout and "preset fsd50k" in student.stdout
    predictions = np.load(run / "main" / "logits-ast" / "student-cnn-from-ast" / "test_predictions.npz")
    assert predictions["teacher_classes"].tolist() == [0, 1, 2]

    options = RunOptions(dataset="fsd50k", run_dir=run, data_root=data, overrides=TINY, teachers=[str(folder)],
                         allow_unmapped=True)
    assert {row["stage"]: row["status"] for row in status_rows(options)}["import-ast"] == "done"
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    rows = {row["stage"]: row for row in status_rows(options)}
    assert rows["import-ast"]["status"] == "stale" and "model.safetensors" in rows["import-ast"]["detail"]
    assert rows["main/logits-ast"]["status"] == "stale" and rows["main/train-cnn"]["status"] == "done"
