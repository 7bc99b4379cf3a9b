"""`cmkd-pipe export`: the Kaldi fbank module matches torchaudio; ONNX graphs of both model families match
PyTorch (fbank input and waveform input); tagging with the ONNX export gives the checkpoint's answer."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
from typer.testing import CliRunner

from cmkd_pipe.cli.app import app
from cmkd_pipe.pipeline.config import FeatureConfig, Normalization
from cmkd_pipe.pipeline.features import fbank, normalize, pad_or_trim
from cmkd_pipe.pipeline.kaldi_frontend import KaldiFbank
from cmkd_pipe.pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from cmkd_pipe.pipeline.models.factory import build_model
from tone_model import FEATURES, TONE_CLASSES, VOCABULARY, long_file, tone_checkpoint, tone_wave  # noqa: F401

TINY_AST = {"arch": "ast", "size": "custom", "embed_dim": 64, "depth": 1, "num_heads": 4, "patch": 16,
            "fstride": 16, "tstride": 16}


def noisy_signals(sr: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """[3, samples]: white noise, tone + noise, speech-like AM noise (realistic noise floors)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    noise = lambda level: level * torch.randn(len(t), generator=g, dtype=torch.float64)  # noqa: E731
    signals = [noise(0.2), 0.5 * torch.sin(2 * np.pi * 440 * t) + noise(0.01),
               (1 + torch.sin(2 * np.pi * 3 * t)) * noise(0.1)]
    return torch.stack(signals).float()


def exact_kaldi_fbank(wave: torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """torchaudio's Kaldi fbank computed in float64: the exact value."""
    wave = wave.double()
    return kaldi.fbank((wave - wave.mean())[None], htk_compat=True, use_energy=False, dither=0.0,
                       window_type=config.window_type, num_mel_bins=config.num_mel_bins)


@pytest.mark.parametrize("window_type,bins", [("hanning", 128), ("povey", 128), ("hanning", 64), ("povey", 40)])
def test_fbank_module_matches_torchaudio_kaldi_fbank(window_type, bins):
    config = FeatureConfig(num_mel_bins=bins, window_type=window_type)
    waves = noisy_signals(16000, 1.2345)
    for wave, got in zip(waves, KaldiFbank(config)(waves)):
        expected = fbank(wave, config)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= 1e-3
        assert float((got.double() - exact_kaldi_fbank(wave, config)).abs().max()) <= 1e-5


def test_fbank_module_is_exact_where_torchaudio_float32_is_not():
    """A clean chirp over a -38 dB noise floor spans ~95 dB within a frame: torchaudio's float32 FFT is then
    itself up to ~3e-3 off in the quietest bands; the module (float64 inside) stays on the exact value."""
    config = FeatureConfig()
    t = torch.arange(20000, dtype=torch.float64) / 16000
    g = torch.Generator().manual_seed(0)
    chirp = (0.4 * torch.sin(2 * np.pi * (100 + 2000 * t) * t) + 0.005 * torch.randn(len(t), generator=g,
                                                                                       dtype=torch.float64)).float()
    exact = exact_kaldi_fbank(chirp, config)
    torchaudio_error = float((fbank(chirp, config).double() - exact).abs().max())
    ours_error = float((KaldiFbank(config)(chirp[None])[0].double() - exact).abs().max())
    assert torchaudio_error > 1e-3 and ours_error <= 1e-5


def _random_ast_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY_AST, len(VOCABULARY), FEATURES.num_mel_bins, FEATURES.target_frames)
    torch.nn.init.normal_(model.head.fc.weight, std=1.0)  # logits of order 1-10, so a mismatch would show
    return save_checkpoint(path, model, feature_config=FEATURES.to_dict(), normalization={"mean": -7.0, "std": 4.0},
                           vocabulary=VOCABULARY, extra={"multilabel": True})


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tone_checkpoint) -> dict[str, tuple[Path, Path]]:
    """{family: (checkpoint, onnx export folder)} for the tiny AST and the trained tiny CNN."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for family, checkpoint in [("ast", _random_ast_checkpoint(root / "ast.pt")), ("cnn", tone_checkpoint)]:
        result = CliRunner().invoke(app, ["export", str(checkpoint), "--format", "onnx", "--out",
                                          str(root / family)])
        assert result.exit_code == 0, result.output
        out[family] = (checkpoint, root / family)
    return out


def _reference_logits(checkpoint: Path, waves: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Raw torchaudio fbank of each wave and the checkpoint's logits on it, as training computes them."""
    model, meta = load_checkpoint(checkpoint)
    norm = Normalization.from_dict(meta["normalization"])
    feats = torch.stack([fbank(w, FEATURES) for w in waves])
    with torch.no_grad():
        fixed = torch.stack([pad_or_trim(f, FEATURES.target_frames)[0] for f in feats])
        return feats, model.eval()(normalize(fixed, norm)).numpy()


@pytest.mark.parametrize("family", ["ast", "cnn"])
def test_onnx_graphs_match_pytorch(exports, family):
    checkpoint, folder = exports[family]
    wave_graph = ort.InferenceSession(str(folder / "model.onnx"))
    fbank_graph = ort.InferenceSession(str(folder / "model_fbank.onnx"))
    window = FEATURES.input_samples
    for samples in (window // 2, window, 3 * window + 77):  # padded, exact, trimmed
        waves = noisy_signals(16000, samples / 16000, seed=samples)[:, :samples]
        feats, expected = _reference_logits(checkpoint, waves)
        assert np.abs(expected).max() > 0.5  # real logits, not a near-zero output that always agrees
        from_fbank = fbank_graph.run(None, {"fbank": feats.numpy()})[0]
        from_wave = wave_graph.run(None, {"waveform": waves.numpy()})[0]
        assert np.abs(from_fbank - expected).max() <= 1e-4
        assert np.abs(from_wave - expected).max() <= 1e-3
        assert from_wave.shape == (3, len(VOCABULARY))


def test_export_folder_describes_itself(exports):
    checkpoint, folder = exports["ast"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "labels.csv", "model.onnx",
                                                        "model_fbank.onnx"]
    config = json.loads((folder / "config.json").read_text())
    assert config["multilabel"] is True and config["feature_config"] == FEATURES.to_dict()
    assert config["normalization"] == {"mean": -7.0, "std": 4.0, "divisor": 2.0}
    assert config["graphs"]["waveform"]["input"] == "waveform" and config["graphs"]["fbank"]["shape"][2] == 32
    with open(folder / "labels.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in r.items()} for r in VOCABULARY]
    again = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(folder)])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_tag_with_the_onnx_export_gives_the_checkpoints_top_k(exports, long_file, tmp_path):
    checkpoint, folder = exports["cnn"]
    short = tmp_path / "short.wav"
    sf.write(short, tone_wave(TONE_CLASSES["mid"], 0.4, np.random.default_rng(1), sr=8000), 8000)
    from cmkd_pipe import load_model

    for target, model in ((long_file, folder), (short, folder / "model.onnx")):  # a folder or its model.onnx
        torch_tags = load_model(checkpoint).tag(target)
        onnx_tags = load_model(model).tag(target)
        assert [t["id"] for t in onnx_tags.top(3)] == [t["id"] for t in torch_tags.top(3)]
        assert onnx_tags.windows == torch_tags.windows
        assert np.abs(onnx_tags.window_scores - torch_tags.window_scores).max() <= 1e-3
        top_windows = [w["top"][0]["id"] for w in onnx_tags.timeline(1)]
        assert top_windows == [w["top"][0]["id"] for w in torch_tags.timeline(1)]
    result = CliRunner().invoke(app, ["tag", str(short), "--model", str(folder / "model.onnx"), "--no-progress"])
    assert result.exit_code == 0 and "Mid tone" in result.output


def test_torchscript_export_matches_pytorch(exports, tmp_path):
    checkpoint, _ = exports["ast"]
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--format", "torchscript", "--out",
                                      str(tmp_path / "ts")])
    assert result.exit_code == 0, result.output
    graph = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    waves = noisy_signals(16000, 1.5)
    _, expected = _reference_logits(checkpoint, waves)
    with torch.no_grad():
        assert np.abs(graph(waves).numpy() - expected).max() <= 1e-3


def test_tagging_with_onnx_builds_no_torch_model(exports, long_file):
    """The ONNX path loads no model code (pipeline.models, timm); only decoding/resampling use torchaudio."""
    import subprocess
    import sys

    _, folder = exports["cnn"]
    probe = ("import sys; from cmkd_pipe.pipeline.inference import Tagger, load_scorer; "
             f"tags = Tagger(load_scorer({str(folder)!r})).tag({str(long_file)!r}); "
             "print(tags.top(1)[0]['id'], sorted(m for m in sys.modules if m.startswith(('cmkd_pipe.pipeline.models', 'timm'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split(" ", 1)[1].strip() == "[]", done.stdout
