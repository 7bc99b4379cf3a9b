"""`cmkd-pipe tag`: sliding windows over long files find the right classes in the right windows; bad files
are skipped with their reason; pure windowing/pooling helpers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cmkd_pipe.cli.app import app
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.inference import Windowing, frame_windows, pool, top_k, windowing
from cmkd_pipe.pipeline.predict import probabilities
from tone_model import SEGMENT_S, SEGMENTS, TONE_CLASSES, long_file, tone_checkpoint, tone_wave  # noqa: F401 (fixtures)


def test_windows_cover_the_file_and_a_short_clip_is_one_padded_window():
    w = Windowing(window=64, hop=32, shift_s=0.01, length_s=0.025)
    assert w.starts(64) == [0]
    assert w.starts(10) == [0]
    assert w.starts(100) == [0, 32, 36]  # the last window ends at the last frame
    assert w.starts(128) == [0, 32, 64]
    assert w.seconds(36, 100) == pytest.approx((0.36, 0.99 + 0.025))
    assert w.seconds(0, 10) == pytest.approx((0.0, 0.09 + 0.025))  # a short clip ends where its audio does
    assert windowing(FeatureConfig(target_frames=512)).hop == 256
    feats = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    stacked = frame_windows(feats, [0], 4)
    assert stacked.shape == (1, 4, 2) and np.array_equal(stacked[0], feats[:4])
    padded = frame_windows(feats[:3], [0], 4)
    assert np.array_equal(padded[0, :3], feats[:3]) and not padded[0, 3].any()


def test_scores_pooling_and_top_k():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    soft = probabilities(logits, multilabel=False)
    assert soft.sum(axis=1) == pytest.approx([1.0, 1.0])
    sig = probabilities(logits, multilabel=True)
    assert sig[0, 0] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert pool(sig, "max") == pytest.approx(sig.max(axis=0))
    assert pool(sig, "mean") == pytest.approx(sig.mean(axis=0))
    assert top_k(np.array([0.1, 0.7, 0.2]), 2) == [1, 2]
    with pytest.raises(ValueError, match="pool"):
        pool(sig, "median")


def test_tag_finds_each_class_in_its_windows_of_a_long_file(tone_checkpoint, long_file, tmp_path):
    timeline = tmp_path / "timeline.csv"
    out_json = tmp_path / "tags.json"
    out_csv = tmp_path / "tags.csv"
    result = CliRunner().invoke(app, ["tag", str(long_file), "--model", str(tone_checkpoint), "--top-k", "3",
                                      "--timeline", str(timeline), "--json", str(out_json), "--csv", str(out_csv),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "sixty.flac" in result.output and "tagged 1 file(s)" in result.output
    rows = pd.read_csv(timeline)
    window_s = 64 * 0.01 + 0.015
    assert len(rows) == pytest.approx(60 / 0.32, abs=2)  # hop = half a 0.64-s window
    assert rows["start_s"].iloc[0] == 0 and rows["end_s"].iloc[-1] == pytest.approx(60.0, abs=0.02)
    inside = 0
    for _, row in rows.iterrows():
        segment = int(row["start_s"] // SEGMENT_S)
        if int((row["end_s"] - 1e-6) // SEGMENT_S) != segment:
            continue  # a window across a boundary hears two classes
        inside += 1
        expected = SEGMENTS[segment]
        scores = row[list(TONE_CLASSES)].astype(float)
        assert scores.idxmax() == expected, (row["start_s"], dict(scores))
        assert row["top"].startswith(f"{expected.title()} tone")
    assert inside >= len(rows) - 2 * (len(SEGMENTS) - 1)  # at most two windows straddle a boundary
    assert row["end_s"] - row["start_s"] == pytest.approx(window_s, abs=1e-3)
    data = json.loads(out_json.read_text())
    clip = data["files"][0]
    assert clip["duration_s"] == pytest.approx(60.0, abs=0.01) and clip["windows"] == len(rows)
    assert {t["id"] for t in clip["top"]} == set(TONE_CLASSES)  # a third of the file each
    assert data["failed"] == [] and data["multilabel"] is False and data["hop_frames"] == 32
    ranked = pd.read_csv(out_csv)
    assert list(ranked["rank"]) == [1, 2, 3] and set(ranked["id"]) == set(TONE_CLASSES)


def test_max_pool_and_hop_change_the_clip_scores(tone_checkpoint, long_file):
    from cmkd_pipe import load_model

    mean_tags = load_model(tone_checkpoint, hop=64).tag(long_file)
    max_tags = load_model(tone_checkpoint, hop=64, pool="max").tag(long_file)
    assert len(mean_tags.windows) == pytest.approx(60 / 0.64, abs=2)
    assert np.array_equal(max_tags.scores, max_tags.window_scores.max(axis=0))
    assert (max_tags.scores > 0.9).all() and (mean_tags.scores < 0.6).all()


def test_bad_files_are_skipped_with_their_reason(tone_checkpoint, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(folder / "sub" / "good.wav", tone_wave(TONE_CLASSES["high"], 2.0, rng, sr=44100), 44100)
    sf.write(folder / "short_ok.wav", tone_wave(TONE_CLASSES["low"], 0.3, rng), 16000)  # < one window: padded
    (folder / "corrupt.wav").write_bytes(b"RIFF....WAVEjunk" * 10)
    sf.write(folder / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(folder / "tiny.wav", np.full(100, 0.1, np.float32), 16000)
    (folder / "notes.txt").write_text("not audio, not tagged")
    missing = tmp_path / "missing.wav"
    result = CliRunner().invoke(app, ["tag", str(folder), str(missing), "--model", str(tone_checkpoint),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "tagged 2 file(s); 4 failed" in result.output
    for name, reason in [("corrupt.wav", "unreadable"), ("silent.wav", "silent"), ("tiny.wav", "too-short"),
                         ("missing.wav", "missing")]:
        assert f"{name}: {reason}" in result.output
    lines = {line.split()[0].rsplit("/", 1)[-1]: line for line in result.output.splitlines()
             if line.startswith(str(tmp_path)) or line.startswith("…")}
    assert "High tone" in lines["good.wav"].split("  ")[1]
    assert lines["short_ok.wav"].split("  ")[1].startswith("Low tone")
    alone = CliRunner().invoke(app, ["tag", str(folder / "corrupt.wav"), "--model", str(tone_checkpoint),
                                     "--no-progress"])
    assert alone.exit_code == 1 and "no file could be tagged" in alone.output


def test_a_manifest_folder_is_tagged_clip_by_clip(tone_checkpoint, tmp_path, corpus_writer):
    rng = np.random.default_rng(3)
    clips = [{"clip_id": f"{c}{i}", "labels": ["a"], "audio": tone_wave(TONE_CLASSES[c], 1.0, rng)}
             for i, c in enumerate(["mid", "high"])]
    manifest = corpus_writer(tmp_path / "corpus", clips)
    from cmkd_pipe.stages.tag import run_tag

    run = run_tag([manifest], tone_checkpoint, top_k=1, progress=False)
    assert [Path(c.path).name for c in run.tagged] == ["mid0.wav", "high1.wav"]
    assert [c.top(1)[0]["id"] for c in run.tagged] == ["mid", "high"]


def test_a_checkpoint_without_the_multilabel_flag_asks_for_it(tone_checkpoint, tmp_path):
    import torch

    data = torch.load(tone_checkpoint, weights_only=True)
    data["extra"] = {}
    bare = tmp_path / "bare.pt"
    torch.save(data, bare)
    from cmkd_pipe.pipeline.inference import load_scorer

    with pytest.raises(ValueError, match="--multilabel or --single-label"):
        load_scorer(bare)
    assert load_scorer(bare, multilabel=True).multilabel is True


def test_a_multilabel_model_gives_sigmoid_scores(tone_checkpoint, long_file, tmp_path):
    import torch

    from cmkd_pipe import load_model

    data = torch.load(tone_checkpoint, weights_only=True)
    data["extra"]["multilabel"] = True
    multilabel = tmp_path / "multilabel.pt"
    torch.save(data, multilabel)
    sigmoid = load_model(multilabel, hop=256).tag(long_file)
    softmax = load_model(tone_checkpoint, hop=256).tag(long_file)
    assert load_model(multilabel).multilabel and not load_model(tone_checkpoint).multilabel
    logits = np.log(sigmoid.window_scores) - np.log1p(-sigmoid.window_scores)  # the logits back from sigmoid
    assert probabilities(logits, multilabel=False) == pytest.approx(softmax.window_scores, abs=1e-4)
    assert not np.allclose(sigmoid.window_scores.sum(axis=1), 1.0)
