"""Manifest builders on tiny fake corpora laid out (names, columns, quoting, comments) as published."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from cmkd_pipe.data_manifests.ast_json import read_ast_json, write_ast_json
from cmkd_pipe.data_manifests.audioset import build_audioset
from cmkd_pipe.data_manifests.builders import build_manifest
from cmkd_pipe.data_manifests.esc50 import build_esc50
from cmkd_pipe.data_manifests.folder import build_folder
from cmkd_pipe.data_manifests.fsd50k import build_fsd50k
from cmkd_pipe.data_manifests.generic_csv import build_generic_csv
from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError, balanced_weights


def wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(160, dtype=np.float32), 16000)
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def rows(manifest: Manifest) -> dict[str, tuple]:
    """clip_id -> (path, labels, split, fold, weight)."""
    c = manifest.clips
    columns = zip(c.clip_id, c.path, c.labels, c.split, c.fold, c.weight)
    return {i: (p, tuple(l), s, f, w) for i, p, l, s, f, w in columns}


# ---------------------------------------------------------------- ESC-50

ESC50_CSV = """filename,fold,target,category,esc10,src_file,take
1-100038-A-2.wav,1,2,pig,False,100038,A
1-100032-A-0.wav,1,0,dog,True,100032,A
2-100648-A-1.wav,2,1,rooster,True,100648,A
3-104958-A-0.wav,3,0,dog,True,104958,A
4-181286-A-1.wav,4,1,rooster,True,181286,A
5-213802-A-2.wav,5,2,pig,False,213802,A
"""


def make_esc50(root: Path, text: str = ESC50_CSV) -> Path:
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text(text)
    for line in text.splitlines()[1:]:
        wav(root / "audio" / line.split(",")[0])
    return root


def test_esc50(tmp_path):
    m = build_esc50(make_esc50(tmp_path / "ESC-50-master"))
    assert m.vocabulary.ids == m.vocabulary.names == ("dog", "rooster", "pig")  # index = target
    assert not m.multilabel and len(m) == 6
    r = rows(m)
    assert r["1-100038-A-2"] == ("audio/1-100038-A-2.wav", ("pig",), "train", 1, 1.0)
    assert sorted(m.clips.fold) == [1, 1, 2, 3, 4, 5]
    targets = [int(name.split("-")[-1]) for name in m.clips.clip_id]
    assert m.targets().argmax(1).tolist() == targets


def test_esc50_inconsistent_classes(tmp_path):
    text = ESC50_CSV.replace("3-104958-A-0.wav,3,0,dog", "3-104958-A-0.wav,3,0,cat")
    with pytest.raises(ManifestError, match=r"target 0 goes with several category values \['cat', 'dog'\]"):
        build_esc50(make_esc50(tmp_path, text))


def test_esc50_missing_csv_and_column(tmp_path):
    with pytest.raises(ManifestError, match=r"meta/esc50.csv: file not found; point root at the ESC-50 folder"):
        build_esc50(tmp_path)
    text = "\n".join(",".join(l.split(",")[:3]) for l in ESC50_CSV.splitlines())  # drop category onwards
    with pytest.raises(ManifestError, match=r"esc50.csv: missing column\(s\) \['category'\]"):
        build_esc50(make_esc50(tmp_path / "esc", text))


# ---------------------------------------------------------------- FSD50K

FSD_VOCAB = """0,Electric_guitar,/m/02sgy
1,Guitar,/m/0342h
2,Music,/m/04rlf
3,Bass_guitar,/m/018vs
"""
FSD_DEV = """fname,labels,mids,split
10,"Electric_guitar,Guitar,Music","/m/02sgy,/m/0342h,/m/04rlf",train
11,"Guitar,Music","/m/0342h,/m/04rlf",train
12,Music,/m/04rlf,train
5,Music,/m/04rlf,val
"""
FSD_EVAL = """fname,labels,mids
5,"Bass_guitar,Music","/m/018vs,/m/04rlf"
6,Music,/m/04rlf
"""


def make_fsd50k(root: Path, dev: str = FSD_DEV) -> Path:
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    (gt / "vocabulary.csv").write_text(FSD_VOCAB)
    (gt / "dev.csv").write_text(dev)
    (gt / "eval.csv").write_text(FSD_EVAL)
    for subset, text in (("dev", dev), ("eval", FSD_EVAL)):
        for line in text.splitlines()[1:]:
            wav(root / f"FSD50K.{subset}_audio" / f"{line.split(',')[0]}.wav")
    return root


def test_fsd50k(tmp_path):
    m = build_fsd50k(make_fsd50k(tmp_path))
    assert m.multilabel and m.vocabulary.ids == ("/m/02sgy", "/m/0342h", "/m/04rlf", "/m/018vs")
    assert m.vocabulary.names[3] == "Bass_guitar"
    r = rows(m)
    assert set(r) == {"dev/10", "dev/11", "dev/12", "dev/5", "eval/5", "eval/6"}  # fname 5 in both subsets
    assert r["dev/10"][:3] == ("FSD50K.dev_audio/10.wav", ("/m/02sgy", "/m/0342h", "/m/04rlf"), "train")
    assert r["dev/5"][2] == "val" and r["eval/5"][:3] == ("FSD50K.eval_audio/5.wav", ("/m/018vs", "/m/04rlf"), "eval")
    assert set(m.clips.fold) == {-1}
    # balanced weight Σ 1000/(count+0.01), counts within the clip's split
    # train counts: /m/02sgy 1, /m/0342h 2, /m/04rlf 3; val: /m/04rlf 1; eval: /m/018vs 1, /m/04rlf 2
    expected = {"dev/10": 1000 / 1.01 + 1000 / 2.01 + 1000 / 3.01, "dev/11": 1000 / 2.01 + 1000 / 3.01,
                "dev/12": 1000 / 3.01, "dev/5": 1000 / 1.01, "eval/5": 1000 / 1.01 + 1000 / 2.01, "eval/6": 1000 / 2.01}
    for clip_id, weight in expected.items():
        assert r[clip_id][4] == pytest.approx(weight)


def test_balanced_weights_hand_example():
    w = balanced_weights([["a", "b"], ["a"], ["c"]])
    assert w == pytest.approx([1000 / 2.01 + 1000 / 1.01, 1000 / 2.01, 1000 / 1.01])


def test_all_offenders_reported_at_once(tmp_path):
    root = make_fsd50k(tmp_path, FSD_DEV + '13,"Music,Nope","/m/04rlf,/m/nope",train\n')
    (root / "FSD50K.dev_audio" / "11.wav").unlink()
    (root / "FSD50K.eval_audio" / "6.wav").unlink()
    with pytest.raises(ManifestError) as err:
        build_fsd50k(root)
    message = str(err.value)
    assert "labels not in the vocabulary: /m/nope" in message
    assert "audio files missing" in message and "dev/11" in message and "eval/6" in message


def test_fsd50k_bad_split(tmp_path):
    with pytest.raises(ManifestError, match=r"dev.csv: split must be one of \('train', 'val'\), found \['test'\]"):
        build_fsd50k(make_fsd50k(tmp_path, FSD_DEV.replace(",val", ",test")))


# ---------------------------------------------------------------- AudioSet

HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
          "# num_ytids={n}, num_segs={n}, num_unique_labels=3, num_positive_labels=6\n"
          "# YTID, start_seconds, end_seconds, positive_labels\n")
BALANCED = HEADER.format(n=4) + """--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
-0RWZT-miFs, 420.000, 430.000, "/m/03v3yw"
0FMdORf5iGs, 30.000, 40.000, "/m/09x0r"
Y9pg7ZlTtKE, 0.000, 10.000, "/m/09x0r"
"""
EVAL = HEADER.format(n=2) + """AbCdEfGh_Ij, 0.000, 10.000, "/m/03v3yw,/m/09x0r,/m/05zppz"
missingid01, 10.000, 20.000, "/m/09x0r"
"""
CLASS_LABELS = """index,mid,display_name
0,/m/09x0r,"Speech"
1,/m/05zppz,"Male speech, man speaking"
2,/t/dd00088,"Gush"
3,/m/03v3yw,"Keys jangling"
"""


def make_audioset(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "balanced_train_segments.csv").write_text(BALANCED)
    (root / "eval_segments.csv").write_text(EVAL)
    (root / "class_labels_indices.csv").write_text(CLASS_LABELS)
    audio = root / "audio"
    wav(audio / "--PJHxphWEs.wav")  # <YTID>.<ext>
    touch(audio / "bal" / "Y-0RWZT-miFs.flac")  # PANNs Y<YTID>, in a sub-folder
    touch(audio / "bal" / "0FMdORf5iGs_30000.ogg")  # <YTID>_<start>
    touch(audio / "bal" / "Y9pg7ZlTtKE_0.000_10.000.mp3")  # <YTID>_<start>_<end>; the id itself starts with Y
    wav(audio / "eval" / "YAbCdEfGh_Ij_0_10.wav")  # Y<YTID>_<start>_<end>, id with an underscore
    touch(audio / "eval" / "missingid01.txt")  # not audio: ignored
    return root


def audioset(root: Path, on_missing: str = "error") -> Manifest:
    return build_audioset([root / "balanced_train_segments.csv", root / "eval_segments.csv"],
                          root / "class_labels_indices.csv", root / "audio", on_missing=on_missing)


def test_audioset_missing_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match=r"no audio under .* for 1 of 6 segments: missingid01 .*on_missing='drop'"):
        audioset(make_audioset(tmp_path / "as"))


def test_audioset_naming_variants_and_drop(tmp_path, caplog):
    root = make_audioset(tmp_path / "as")
    with caplog.at_level(logging.WARNING):
        m = audioset(root, on_missing="drop")
    assert "dropped 1 of 6 segments" in caplog.text and "missingid01" in caplog.text
    assert m.multilabel and m.root == root / "audio"
    assert m.vocabulary.names == ("Speech", "Male speech, man speaking", "Gush", "Keys jangling")
    r = rows(m)
    assert {k: v[0] for k, v in r.items()} == {
        "--PJHxphWEs": "--PJHxphWEs.wav", "-0RWZT-miFs": "bal/Y-0RWZT-miFs.flac",
        "0FMdORf5iGs": "bal/0FMdORf5iGs_30000.ogg", "Y9pg7ZlTtKE": "bal/Y9pg7ZlTtKE_0.000_10.000.mp3",
        "AbCdEfGh_Ij": "eval/YAbCdEfGh_Ij_0_10.wav"}
    assert r["--PJHxphWEs"][1:3] == (("/m/09x0r", "/t/dd00088"), "balanced_train")
    assert r["AbCdEfGh_Ij"][1:3] == (("/m/03v3yw", "/m/09x0r", "/m/05zppz"), "eval")
    # balanced_train counts: /m/09x0r 3, /t/dd00088 1, /m/03v3yw 1; eval (after the drop): 1 each
    assert r["--PJHxphWEs"][4] == pytest.approx(1000 / 3.01 + 1000 / 1.01)
    assert r["0FMdORf5iGs"][4] == pytest.approx(1000 / 3.01)
    assert r["AbCdEfGh_Ij"][4] == pytest.approx(3 * 1000 / 1.01)


def test_audioset_two_files_for_one_id(tmp_path):
    root = make_audioset(tmp_path / "as")
    touch(root / "audio" / "eval" / "missingid01.wav")
    touch(root / "audio" / "--PJHxphWEs_30.flac")
    with pytest.raises(ManifestError, match=r"several audio files for one YouTube id .*--PJHxphWEs \("):
        audioset(root)


def test_audioset_bad_row(tmp_path):
    root = make_audioset(tmp_path / "as")
    (root / "eval_segments.csv").write_text(EVAL + "brokenrow01, 10.000\n")
    with pytest.raises(ManifestError, match=r"eval_segments.csv: line\(s\) 6 are not"):
        audioset(root)


# ---------------------------------------------------------------- folder per class, generic CSV

def test_folder(tmp_path):
    for name in ["a", "b", "c", "d"]:
        wav(tmp_path / "cat" / f"{name}.wav")
    for name in ["1", "2", "3", "4", "5", "sub/6"]:
        wav(tmp_path / "dog" / f"{name}.wav")
    touch(tmp_path / "dog" / "readme.txt")
    m = build_folder(tmp_path, folds=3)
    assert m.vocabulary.ids == ("cat", "dog") and not m.multilabel
    assert dict(zip(m.clips.clip_id, m.clips.fold)) == {
        "cat/a": 1, "cat/b": 2, "cat/c": 3, "cat/d": 1,  # each class dealt round-robin, dog going on from fold 2
        "dog/1": 2, "dog/2": 3, "dog/3": 1, "dog/4": 2, "dog/5": 3, "dog/sub/6": 1}
    assert set(m.clips.split) == {"train"} and m.hash() == build_folder(tmp_path, folds=3).hash()
    assert set(build_folder(tmp_path, folds=0).clips.fold) == {-1}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match=r"class folder\(s\) without audio files: \['empty'\]"):
        build_folder(tmp_path)


def test_generic_csv(tmp_path):
    for name in ["a.wav", "b.wav", "sub/c.flac"]:
        wav(tmp_path / name)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,split,fold\na.wav,dog;bark,train,1\nb.wav,cat,val,2\nsub/c.flac, bark ,train,1\n")
    m = build_generic_csv(csv_path)
    assert m.multilabel and m.vocabulary.ids == ("bark", "cat", "dog") and m.root == tmp_path
    assert rows(m) == {"a": ("a.wav", ("dog", "bark"), "train", 1, 1.0), "b": ("b.wav", ("cat",), "val", 2, 1.0),
                       "sub/c": ("sub/c.flac", ("bark",), "train", 1, 1.0)}
    csv_path.write_text("path,label\na.wav,dog\nb.wav,cat\n")
    single = build_generic_csv(csv_path)
    assert not single.multilabel and set(single.clips.split) == {"train"} and set(single.clips.fold) == {-1}
    csv_path.write_text("file,label\na.wav,dog\n")
    with pytest.raises(ManifestError, match=r"labels.csv: missing column\(s\) \['path'\]"):
        build_generic_csv(csv_path)


# ---------------------------------------------------------------- AST JSON, save/load, registry

def test_ast_json_round_trip(tmp_path):
    original = build_fsd50k(make_fsd50k(tmp_path / "fsd"))
    written = write_ast_json(original, tmp_path / "datafiles")
    assert sorted(written) == ["eval", "train", "val"]
    entry = json.loads(written["train"].read_text())["data"][0]
    assert entry["wav"] == str((tmp_path / "fsd" / "FSD50K.dev_audio" / "10.wav").absolute())
    assert entry["labels"] == "/m/02sgy,/m/0342h,/m/04rlf"
    labels_csv = tmp_path / "datafiles" / "class_labels_indices.csv"
    assert labels_csv.read_text().splitlines()[:2] == ["index,mid,display_name", "0,/m/02sgy,Electric_guitar"]
    back = read_ast_json(written, labels_csv)
    assert back.vocabulary == original.vocabulary and back.multilabel
    assert back.root == tmp_path / "fsd"
    assert rows(back) == rows(original)


def test_ast_json_as_ast_writes_it(tmp_path):
    wav(tmp_path / "audio" / "x.wav")
    wav(tmp_path / "audio" / "y.wav")
    (tmp_path / "class_labels_indices.csv").write_text(CLASS_LABELS)
    (tmp_path / "tr.json").write_text(json.dumps({"data": [
        {"video_id": "x", "wav": "audio/x.wav", "labels": "/m/09x0r"},
        {"video_id": "y", "wav": str(tmp_path / "audio" / "y.wav"), "labels": "/m/09x0r,/t/dd00088"}]}))
    m = build_manifest("ast-json", tmp_path, splits="train=tr.json")
    assert m.multilabel and list(m.clips.clip_id) == ["x", "y"] and list(m.clips.split) == ["train", "train"]
    assert m.clips.weight.tolist() == pytest.approx([1000 / 2.01, 1000 / 2.01 + 1000 / 1.01])


def test_manifest_save_load_round_trip(tmp_path):
    m = audioset(make_audioset(tmp_path / "as"), on_missing="drop")
    loaded = Manifest.load(m.save(tmp_path / "manifest"))
    assert loaded.hash() == m.hash() and rows(loaded) == rows(m)
    assert loaded.vocabulary == m.vocabulary and loaded.multilabel and loaded.root == (tmp_path / "as" / "audio")


def test_registry(tmp_path):
    root = make_audioset(tmp_path / "as")
    m = build_manifest("audioset", root, on_missing="drop")
    assert m.hash() == audioset(root, on_missing="drop").hash()
    only_balanced = build_manifest("audioset", root, segments="balanced_train_segments.csv")
    assert set(only_balanced.clips.split) == {"balanced_train"}
    esc = make_esc50(tmp_path / "esc")
    assert build_manifest("esc50", esc).hash() == build_esc50(esc).hash()
    with pytest.raises(ManifestError, match=r"unknown manifest kind 'esc10'; choose one of \['ast-json', 'audioset'"):
        build_manifest("esc10", esc)
    with pytest.raises(ManifestError, match=r"kind 'folder' takes no option\(s\) \['fold'\]; it takes \['folds'\]"):
        build_manifest("folder", esc, fold=3)
    with pytest.raises(ManifestError, match=r"for kind 'csv' root is the labelled CSV file"):
        build_manifest("csv", esc)
