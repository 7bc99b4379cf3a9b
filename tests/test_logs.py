"""RunLogger: JSONL/CSV rows, resume and rerun semantics, TensorBoard scalars, curves PNG."""
import csv

import numpy as np
import pytest
import torch

from cmkd_pipe.pipeline.training.logs import RunLogger, load_metrics


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_rows_go_to_jsonl_and_csv(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"epoch": 1, "train_loss": 0.9, "val_mAP": 0.1})
        logger.log({"epoch": 2, "train_loss": 0.7, "val_mAP": 0.2, "lr": 1e-4})
    rows = load_metrics(tmp_path)
    assert rows == [{"epoch": 1, "train_loss": 0.9, "val_mAP": 0.1},
                    {"epoch": 2, "train_loss": 0.7, "val_mAP": 0.2, "lr": 1e-4}]
    table = read_csv(tmp_path / "metrics.csv")
    assert list(table[0]) == ["epoch", "train_loss", "val_mAP", "lr"]
    assert table[0]["lr"] == "" and float(table[1]["lr"]) == 1e-4


def test_reopening_keeps_rows_and_a_rerun_replaces_from_that_epoch(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as logger:
        for epoch in (1, 2, 3):
            logger.log({"epoch": epoch, "train_loss": float(epoch)})
    with RunLogger(tmp_path, tensorboard=False) as logger:  # resumed from the epoch-1 checkpoint
        assert [r["epoch"] for r in logger.rows] == [1, 2, 3]
        logger.log({"epoch": 2, "train_loss": 20.0})
    assert load_metrics(tmp_path) == [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 20.0}]
    assert [r["train_loss"] for r in read_csv(tmp_path / "metrics.csv")] == ["1.0", "20.0"]


def test_numpy_and_tensor_scalars_become_plain_numbers(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"epoch": np.int64(1), "loss": np.float32(0.5), "acc": torch.tensor(0.25), "note": "ok"})
    assert load_metrics(tmp_path) == [{"epoch": 1, "loss": 0.5, "acc": 0.25, "note": "ok"}]


def test_bad_rows_are_refused(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="integer 'epoch'"):
        logger.log({"loss": 1.0})
    with pytest.raises(ValueError, match="'scores' holds several values"):
        logger.log({"epoch": 1, "scores": np.zeros(3)})
    with pytest.raises(ValueError, match="'cfg' is a dict"):
        logger.log({"epoch": 1, "cfg": {}})


def test_corrupt_metrics_file_names_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        load_metrics(tmp_path)
    assert load_metrics(tmp_path / "nothing-here") == []


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path) as logger:
        logger.log({"epoch": 1, "train_loss": 0.5, "note": "text is skipped"})
        logger.log({"epoch": 2, "train_loss": 0.25})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Tags()["scalars"] == ["train_loss"]
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(1, 0.5), (2, 0.25)]


def test_plot_curves_writes_a_png(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="no epochs logged"):
        logger.plot_curves(tmp_path / "curves.png", metric="accuracy")
    for epoch in (1, 2, 3):
        logger.log({"epoch": epoch, "train_loss": 1 / epoch, "val_loss": None, "val_accuracy": epoch / 4})
    path = logger.plot_curves(tmp_path / "plots" / "curves.png", metric="accuracy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_hides_the_interrupted_runs_later_epochs(tmp_path):
    """Also when the two runs' event files are opened in the same second and their writer counters cross
    from 9 to 10 (which sorts the later file first by name)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    for index in range(9):
        SummaryWriter(str(tmp_path / f"other-{index}")).close()
    with RunLogger(tmp_path) as logger:
        for epoch in (1, 2, 3):
            logger.log({"epoch": epoch, "train_loss": float(epoch)})
    with RunLogger(tmp_path) as logger:
        logger.log({"epoch": 2, "train_loss": 20.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(1, 1.0), (2, 20.0)]
