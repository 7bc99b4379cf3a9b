"""The atomic-write helpers of pipeline/records.py and the fold split helper of pipeline/datasets.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmkd_pipe.pipeline.datasets import fold_overrides
from cmkd_pipe.pipeline.records import (atomic_path, copy_atomic, save_npz_atomic, torch_save_atomic, write_bytes_atomic,
                              write_json_atomic, write_text_atomic)
from cmkd_pipe.pipeline.stores.feature_store import select_mask


def test_each_helper_writes_its_file_and_leaves_no_temporary(tmp_path):
    write_text_atomic(tmp_path / "a" / "t.txt", "text")
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_json_atomic(tmp_path / "c.json", {"x": 1})
    save_npz_atomic(tmp_path / "d.npz", scores=np.arange(3))
    torch_save_atomic(tmp_path / "e.pt", {"w": torch.ones(2)})
    copy_atomic(tmp_path / "b.bin", tmp_path / "f.bin")
    assert (tmp_path / "a" / "t.txt").read_text() == "text"
    assert (tmp_path / "b.bin").read_bytes() == (tmp_path / "f.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": 1}
    assert np.load(tmp_path / "d.npz")["scores"].tolist() == [0, 1, 2]
    assert torch.equal(torch.load(tmp_path / "e.pt")["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.bin", "c.json", "d.npz", "e.pt", "f.bin"]
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"old": True})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_fold_overrides():
    assert fold_overrides(2) == ["data.train=fold!=2", "data.val=fold==2", "data.test=fold==2"]
    train, val, test = (item.split("=", 1)[1] for item in fold_overrides(2, val_fold=3))
    folds, splits = np.array([1, 2, 3, 1, 2, 3]), np.array(["train"] * 6)
    assert select_mask(train, splits, folds).tolist() == [True, False, False, True, False, False]
    assert (val, test) == ("fold==3", "fold==2")
