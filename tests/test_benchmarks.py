"""The benchmarks keep running: the shared alternation harness, every benchmark's --quick run through
`benchmarks.results` (RESULTS.md), the prepared GPU check (its tiny CPU version here) and the stage-time table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import main, peak_tflops
from benchmarks.paired import Seconds, alternate, model_spec, paired, parse_shapes

REPO = Path(__file__).resolve().parents[1]


def test_variants_alternate_round_by_round_after_the_warmup():
    calls = []
    times = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b") or Seconds(2.5)},
                      rounds=3, warmup=1, log=None)
    assert calls == ["a", "b"] * 4  # A B A B ..., the first round untimed
    assert len(times["a"]) == 3 and all(0 <= t < 1 for t in times["a"]) and times["b"] == [2.5] * 3


def test_paired_ratio_is_taken_round_by_round():
    ratio = paired([2.0, 6.0, 3.0], [1.0, 2.0, 3.0])
    assert ratio["per_round"] == [2.0, 3.0, 1.0] and (ratio["min"], ratio["median"], ratio["max"]) == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 2.0])


def test_models_and_shapes_are_named_or_refused_in_one_line():
    assert model_spec("efficientnet-b2")["variant"] == "efficientnet_b2"
    assert model_spec('{"arch": "ast", "size": "base384"}') == {"arch": "ast", "size": "base384"}
    assert parse_shapes("128x512, 128X1024") == [(128, 512), (128, 1024)]
    with pytest.raises(SystemExit, match="model 'vit': expected one of ast-base384"):
        model_spec("vit")
    with pytest.raises(SystemExit, match=r"--shapes: '128-512' is not MELSxFRAMES"):
        parse_shapes("128-512")


@pytest.mark.slow
def test_every_benchmark_runs_quick_and_fills_the_results_table(tmp_path):
    """`make bench QUICK=1`: each benchmark in its own process, then one table (tiny, about 2 minutes)."""
    from benchmarks.results import BENCHMARKS

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "benchmarks.results", "--quick", "--out", str(tmp_path / "RESULTS.md"),
                    "--keep-json", str(tmp_path)], cwd=REPO, env=env, check=True, capture_output=True)
    headline = []
    for name in BENCHMARKS:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["quick"] and data["rounds"] == 2 and data["timings"] and data["ratios"]
        for timing in data["timings"].values():
            assert all(len(v["per_round"]) == 2 and v["min"] <= v["median"] <= v["max"]
                       for v in timing["variants"].values())
        for entry in data["ratios"]:
            assert len(entry["per_round"]) == 2 and 0 < entry["min"] <= entry["median"] <= entry["max"]
        headline += [entry["label"] for entry in data["ratios"] if entry["headline"]]
    keys = {entry["key"].split("/")[0] for name in BENCHMARKS
            for entry in json.loads((tmp_path / f"{name}.json").read_text())["ratios"]}
    assert {"read_vs_decode", "checkpoint_load_vs_read", "stage_vs_loop", "step_cached1_vs_plain",
            "step_cached3_vs_plain", "step_online_vs_cached", "features_2_vs_1_workers", "data_share_of_step",
            "loader_2_vs_0_workers"} <= keys
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| measure | goal | before | now | met |" in table and "Quick run" in table
    assert all(f"| {label} |" in table for label in headline)


def test_gpu_check_writes_its_json(tmp_path):
    out = tmp_path / "gpu.json"
    report = main(["--out", str(out), "--steps", "1", "--rounds", "2", "--tiny"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["configs"] == "tiny" and report["rounds"] == 2
    rows = report["teacher_logits"]["by_batch"]
    assert rows and all(row["clips_per_s"] > 0 for row in rows)
    assert report["teacher_logits"]["flops_per_clip"] > 0
    eager = report["student"]["eager"]
    assert eager["cached"]["clips_per_s"] > 0 and eager["online"]["clips_per_s"] > 0
    assert 0 <= eager["cached"]["prep_share"] < 1 and 0 < eager["online"]["prep_share"] < 1
    low, high = eager["online_over_cached_step_min_max"]
    assert low <= eager["online_over_cached_step"] <= high


def test_results_name_the_gpu_check_only_when_it_ran_on_a_gpu(tmp_path):
    from benchmarks.results import gpu_check_line

    path = tmp_path / "gpu.json"
    report = main(["--out", str(path), "--steps", "1", "--rounds", "1", "--tiny"])
    assert gpu_check_line(path).startswith("GPU check: not run on a GPU")
    report["device"], report["peak_gpu_memory_gib"] = "NVIDIA H200", 12.5
    report["teacher_logits"]["by_batch"][0]["share_of_bf16_peak"] = 0.41
    path.write_text(json.dumps(report))
    line = gpu_check_line(path)
    assert line.startswith("GPU check (NVIDIA H200, benchmarks/gpu-check.json): teacher ") and "12.5 GiB" in line


def test_known_devices_have_a_bf16_peak():
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("Some Future Accelerator") is None


def test_stage_times_table_reads_the_records(tmp_path):
    from benchmarks.stage_times import markdown
    from cmkd_pipe.pipeline.records import write_record

    write_record(tmp_path / "features", stage="features", config={}, inputs={}, outputs=[], started=0, finished=4)
    write_record(tmp_path / "fold-1" / "train-cnn", stage="train", config={}, inputs={}, outputs=[], started=5,
                 finished=65)
    table = markdown(tmp_path, total=70.0)
    assert "| features | features | 4.0 |" in table and "| fold-1/train-cnn | train | 60.0 |" in table
    assert "Sum over stages: 64.0 s; wall time of the whole run: 70.0 s" in table


@pytest.mark.slow
def test_the_codec_comparison_runs_quick_and_names_the_default(tmp_path):
    """`python -m benchmarks.codecs --quick`: every named codec timed and sized, the default marked."""
    from benchmarks.codecs import main
    from cmkd_pipe.pipeline.stores.codecs import CODECS, DEFAULT_CODEC

    data = main(["--quick", "--json", str(tmp_path / "codecs.json")])
    assert {entry["key"] for entry in data["ratios"]} == {f"codec/{name}/32x64" for name in CODECS}
    assert any(f"{DEFAULT_CODEC} (default)" in note for note in data["notes"])
