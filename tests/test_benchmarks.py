"""The benchmarks keep running: the prepared GPU check (its tiny CPU version here) and the stage-time table."""
from __future__ import annotations

import json

from benchmarks.gpu import main, peak_tflops


def test_gpu_check_writes_its_json(tmp_path):
    out = tmp_path / "gpu.json"
    report = main(["--out", str(out), "--steps", "1", "--tiny"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["configs"] == "tiny"
    rows = report["teacher_logits"]["by_batch"]
    assert rows and all(row["clips_per_s"] > 0 for row in rows)
    assert report["teacher_logits"]["flops_per_clip"] > 0
    eager = report["student"]["eager"]
    assert eager["cached"]["clips_per_s"] > 0 and eager["online"]["clips_per_s"] > 0
    assert 0 <= eager["cached"]["prep_share"] < 1 and 0 < eager["online"]["prep_share"] < 1


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
