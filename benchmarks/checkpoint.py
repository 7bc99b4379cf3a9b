"""Loading a teacher checkpoint against reading its file, before and after building on the meta device.

For each shape, a randomly initialised teacher (default AST base384, 345 MB at 128 x 1024) is saved as
our checkpoint in a temporary folder (under /tmp unless --work-dir says otherwise), then, alternated:
- reading the file's bytes (the floor: the file is in the page cache after the first round),
- `load_checkpoint` as it was before issue #13 (build the model with its random initialisation, then
  copy the weights in),
- `load_checkpoint` now (built on the meta device, the checkpoint's tensors assigned),
- its SHA-256 (what every teacher-logits worker used to compute again; now only the driver does).

    python -m benchmarks.checkpoint [--quick] [--teacher ast-base384] [--shapes 128x512,128x1024] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.paired import Results, add_arguments, alternate, demo_features, finish_arguments, paired, \
    random_checkpoint, shape_name
from cmkd_pipe.pipeline.models.checkpoint import file_sha256, load_checkpoint, read_checkpoint
from cmkd_pipe.pipeline.models.factory import build_model
from cmkd_pipe.pipeline.models.weights import load_strict


def load_before(path: Path) -> object:
    """load_checkpoint before issue #13: a randomly initialised model, then the weights copied in."""
    data = read_checkpoint(path)
    model = build_model(data["model_config"], data["n_classes"], data["n_mels"], data["n_frames"])
    load_strict(model, data["state_dict"], source=f"checkpoint {path}")
    return model


def read_file(path: Path) -> int:
    with open(path, "rb") as handle:
        return len(handle.read())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--work-dir", type=Path, help="where the checkpoints are written (default: a temporary "
                                                      "folder under /tmp)")
    args = finish_arguments(parser.parse_args(argv))
    results = Results("checkpoint", args, models=("teacher",))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for shape in args.shape_list:
            name = shape_name(shape)
            features = demo_features(work, shape, clips_per_class=5)  # the vocabulary and front-end it is for
            path = random_checkpoint(work / f"teacher-{name}.pt", args.teacher_spec, features)
            megabytes = path.stat().st_size / 2**20
            print(f"\n{name}: checkpoint of {args.teacher} {megabytes:.0f} MB")
            times = alternate({"read the file": lambda: read_file(path),
                               "load, before": lambda: load_before(path),
                               "load, now": lambda: load_checkpoint(path),
                               "sha256": lambda: file_sha256(path)}, args.rounds)
            results.timings(f"checkpoint of {megabytes:.0f} MB, {name}", times)
            read_s, now_s, before_s = (statistics.median(times[key])
                                       for key in ("read the file", "load, now", "load, before"))
            results.ratio(f"checkpoint_load_vs_read/{name}", f"checkpoint load / file read, {args.teacher} {name}",
                          times["load, now"], times["read the file"], goal=("<=", 1.5),
                          before=paired(times["load, before"], times["read the file"]),
                          why_not=f"the file comes from the page cache at {megabytes / 1024 / read_s:.1f} GB/s "
                                  f"({read_s:.2f} s); the load adds torch.load's copy into tensors and the meta-device "
                                  f"build: {now_s:.2f} s in all (before: {before_s:.2f} s)")
            results.ratio(f"sha256_vs_read/{name}", f"sha256 / file read, {name} (once per run now, was once per "
                          "worker as well)", times["sha256"], times["read the file"], headline=False)
    results.note("the file is in the page cache after the first round: 'read the file' is a warm read")
    return results.finish(args.json)


if __name__ == "__main__":
    main()
