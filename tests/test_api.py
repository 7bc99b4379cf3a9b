"""The Python API a notebook uses: the whole CMKD flow in ten lines, then tagging with the trained models."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

import cmkd_pipe
from tone_model import TONE_CLASSES, tone_wave


@pytest.fixture
def corpus(tmp_path, corpus_writer) -> Path:
    """Three tone classes, eight clips each (two of each class in the eval split)."""
    rng = np.random.default_rng(0)
    clips = [{"clip_id": f"{label}{i}", "labels": [label], "split": "eval" if i % 4 == 0 else "train",
              "audio": tone_wave(freq * rng.uniform(0.95, 1.05), 0.7, rng)}
             for label, freq in TONE_CLASSES.items() for i in range(8)]
    return corpus_writer(tmp_path / "corpus", clips, classes=tuple(TONE_CLASSES))


def test_the_notebook_example_runs(corpus, tmp_path, monkeypatch, scheduler):
    monkeypatch.chdir(tmp_path)
    wav = tmp_path / "corpus" / "audio" / "high1.wav"
    # --- the README's notebook example (plus scheduler=: the tests run stages in-process) ---------------------
    from cmkd_pipe import FeatureConfig, features, load_model, teacher_logits, train, train_student

    quick = ["train.epochs=1", "average.wa_end_epoch=1"]
    features("corpus/manifest", "run/features.zarr", config=FeatureConfig(num_mel_bins=32, target_frames=64),
             scheduler=scheduler)
    train("run/features.zarr", "run/cnn", model="cnn", preset="smoke", overrides=quick)
    teacher_logits("run/cnn/final.pt", "run/cnn-logits.zarr", scheduler=scheduler)
    train_student("run/cnn-logits.zarr", overrides=quick)            # an AST taught by the CNN
    student = load_model("run/student-ast-from-cnn/final.pt")
    clip = student.tag(wav)
    print(clip.top(3), clip.timeline(1)[0])
    # -------------------------------------------------------------------------------------------------------
    assert [label.id for label in student.labels] == list(TONE_CLASSES)
    assert len(clip.top(3)) == 3 and clip.scores.sum() == pytest.approx(1.0, abs=1e-5)  # softmax scores
    assert clip.duration_s == pytest.approx(0.7) and len(clip.windows) == 2  # 68 frames: windows at 0 and 4
    assert (tmp_path / "run" / "student-ast-from-cnn" / "results.json").is_file()
    import torch

    extra = torch.load(tmp_path / "run" / "student-ast-from-cnn" / "final.pt", weights_only=True)["extra"]
    assert extra["multilabel"] is False and student.multilabel is False  # training records it for tagging


def test_the_api_functions_are_typed_and_documented():
    for name in ("features", "teacher_logits", "train", "train_student", "report", "tag", "export", "load_model"):
        function = getattr(cmkd_pipe, name)
        signature = inspect.signature(function)
        assert function.__doc__, name
        assert signature.return_annotation is not inspect.Signature.empty, name
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), name
