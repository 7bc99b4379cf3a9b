"""What every benchmark shares: variants timed in alternation, summaries that hold on a noisy machine,
the model pair and input shapes as arguments, and one JSON of results (benchmarks/results.py turns the
JSONs into RESULTS.md).

On a shared machine the load drifts over minutes, so timing variant A for a while and then B compares
two different machines. Here every round runs each variant once, in the same order (A B A B ...), and
a comparison is the median of the per-round ratios A/B (the paired ratio), with its min and max, next
to each variant's min / median / max seconds.

Common options: --quick (tiny models and shapes, few rounds: what the tests run), --rounds, --teacher /
--student (a name of MODELS or a JSON model config), --shapes (MELSxFRAMES,...), --threads, --json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MODELS: dict[str, dict[str, Any]] = {
    "ast-base384": {"arch": "ast", "size": "base384", "fstride": 10, "tstride": 10},  # CMKD's AST
    "efficientnet-b2": {"arch": "cnn", "variant": "efficientnet_b2", "pooling": "mean"},  # CMKD's CNN
    "ast-tiny": {"arch": "ast", "size": "custom", "embed_dim": 32, "depth": 1, "num_heads": 2, "patch": 16,
                 "fstride": 16, "tstride": 16},
    "cnn-tiny": {"arch": "timm:test_efficientnet", "pooling": "mean"},
}
FULL = {"teacher": "ast-base384", "student": "efficientnet-b2", "shapes": "128x512,128x1024", "rounds": 5}
QUICK = {"teacher": "ast-tiny", "student": "cnn-tiny", "shapes": "32x64", "rounds": 2}
Timings = dict[str, list[float]]


class Seconds(float):
    """What a variant returns to report its own measured seconds (e.g. only its steps) instead of being
    timed whole."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes (defaults: the paper pair and shapes, or --quick's)."""
    parser.add_argument("--quick", action="store_true", help="tiny models and shapes, few rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, help=f"timed rounds of every variant (default {FULL['rounds']}, "
                                                   f"quick {QUICK['rounds']})")
    parser.add_argument("--teacher", help=f"teacher model: one of {', '.join(MODELS)} or a JSON model config "
                                          f"(default {FULL['teacher']})")
    parser.add_argument("--student", help=f"student model, as --teacher (default {FULL['student']})")
    parser.add_argument("--shapes", help=f"input shapes MELSxFRAMES, comma separated (default {FULL['shapes']})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core's view)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")


def finish_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults (--quick's or the full run's), parse models and shapes, set torch's threads."""
    import torch

    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    args.teacher_spec, args.student_spec = model_spec(args.teacher), model_spec(args.student)
    args.shape_list = parse_shapes(args.shapes)
    torch.set_num_threads(args.threads)
    return args


def model_spec(text: str) -> dict[str, Any]:
    """A model config from a name of MODELS or a JSON object."""
    if text in MODELS:
        return dict(MODELS[text])
    try:
        spec = json.loads(text)
    except json.JSONDecodeError:
        spec = None
    if not isinstance(spec, dict) or "arch" not in spec:
        raise SystemExit(f"model {text!r}: expected one of {', '.join(MODELS)} or a JSON config with an 'arch' key")
    return spec


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'128x512,128x1024' -> [(128, 512), (128, 1024)] as (mel bins, frames)."""
    shapes = []
    for part in text.split(","):
        try:
            mels, frames = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: {part!r} is not MELSxFRAMES (e.g. 128x1024)") from None
        shapes.append((mels, frames))
    return shapes


def shape_name(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def alternate(variants: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
              log: Callable[[str], None] | None = print) -> Timings:
    """Seconds of every variant in each of `rounds` rounds, run A B A B ... after `warmup` untimed
    rounds. A variant that returns Seconds reports its own time instead of being timed whole."""
    times: Timings = {name: [] for name in variants}
    for round_ in range(-warmup, rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            own = run()
            seconds = float(own) if isinstance(own, Seconds) else time.perf_counter() - start
            if round_ >= 0:
                times[name].append(seconds)
        if log and round_ >= 0:
            log(f"  round {round_ + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in variants))
    return times


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def paired(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    """Min / median / max over rounds of numerator[r] / denominator[r]."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {**spread(ratios), "per_round": ratios}


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() \
        else platform.processor()
    import torch

    return {"cpu": model, "cores": os.cpu_count(), "load_average": list(os.getloadavg()),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "host": platform.node()}


class Results:
    """One benchmark's measurements: variant timings, paired ratios (some with a goal) and notes."""

    def __init__(self, benchmark: str, args: argparse.Namespace,
                 models: Sequence[str] = ("teacher", "student")) -> None:
        """`models`: which of --teacher / --student this benchmark uses (recorded with the shapes)."""
        self.data: dict[str, Any] = {
            "benchmark": benchmark, "quick": bool(args.quick), "rounds": args.rounds,
            "models": {role: getattr(args, f"{role}_spec") for role in models}, "shapes": args.shapes,
            "machine_before": machine(), "timings": {}, "ratios": [], "notes": [],
        }
        self.started = time.perf_counter()

    def timings(self, group: str, times: Timings, unit: str = "s") -> None:
        """Record the variants of one comparison (e.g. one shape) with their per-round seconds."""
        self.data["timings"][group] = {"unit": unit, "variants": {name: {**spread(values), "per_round": values}
                                                                  for name, values in times.items()}}

    def ratio(self, key: str, label: str, numerator: Sequence[float], denominator: Sequence[float], *,
              goal: tuple[str, float] | None = None, before: dict[str, Any] | None = None,
              headline: bool = True, why_not: str | None = None) -> dict[str, Any]:
        """Record numerator/denominator paired over rounds; `goal` ('>=' or '<=', value) is checked on the
        median; `before` is the same ratio measured with the code before the change (a paired() result);
        `why_not`: what the measurements say about a missed goal (kept only when it is missed)."""
        entry = {"key": key, "label": label, **paired(numerator, denominator), "headline": headline,
                 "goal": list(goal) if goal else None, "before": before, "why_not": None}
        if goal:
            op, value = goal
            entry["met"] = entry["median"] >= value if op == ">=" else entry["median"] <= value
            entry["why_not"] = None if entry["met"] else why_not
        self.data["ratios"].append(entry)
        print(f"{label}: {entry['median']:.2f}x (min {entry['min']:.2f}, max {entry['max']:.2f})"
              + (f"; before {before['median']:.2f}x" if before else "")
              + (f"; goal {goal[0]} {goal[1]:g}: {'met' if entry['met'] else 'NOT met'}" if goal else ""))
        return entry

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(text)

    def finish(self, path: Path | None) -> dict[str, Any]:
        """Add the wall time and the load after the run; write the JSON (atomically) if asked."""
        self.data["seconds"] = time.perf_counter() - self.started
        self.data["machine_after"] = machine()
        if path is not None:
            from cmkd_pipe.pipeline.records import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        return self.data


# ------------------------------------------------------------------------------ shared set-up

def demo_features(work: Path, shape: tuple[int, int], clips_per_class: int, chunk_clips: int = 32) -> Path:
    """The built-in demo corpus with clips as long as `shape`'s frames (10 ms hop; 5 folds, or 1 when
    clips_per_class is not a multiple of 5) and its feature store at that shape, built in this process;
    returns the store path."""
    from cmkd_pipe.data_manifests.demo import make_demo_corpus
    from cmkd_pipe.pipeline.config import FeatureConfig
    from cmkd_pipe.pipeline.parallel import SYNCHRONOUS
    from cmkd_pipe.stages.features import run_features

    mels, frames = shape
    root = work / f"demo-{shape_name(shape)}-{clips_per_class}"
    make_demo_corpus(root, clips_per_class=clips_per_class, n_folds=5 if clips_per_class % 5 == 0 else 1,
                     clip_seconds=max(0.5, frames / 100))
    store = root / "features.zarr"
    run_features(root / "manifest", store, config=FeatureConfig(num_mel_bins=mels, target_frames=frames),
                 chunk_clips=chunk_clips, scheduler=SYNCHRONOUS, overwrite=True, progress=False)
    return store


def random_checkpoint(path: Path, spec: dict[str, Any], features: Path, seed: int = 0) -> Path:
    """A randomly initialised model of `spec` for a feature store, saved as our checkpoint (the timings do
    not depend on the weights)."""
    import torch

    from cmkd_pipe.pipeline.models.checkpoint import save_checkpoint
    from cmkd_pipe.pipeline.models.factory import build_model
    from cmkd_pipe.pipeline.stores.feature_store import FeatureStore

    store = FeatureStore(features)
    config = store.feature_config
    torch.manual_seed(seed)
    model = build_model(spec, store.n_classes, config.num_mel_bins, config.target_frames)
    return save_checkpoint(path, model, feature_config=config.to_dict(), normalization=store.normalization().to_dict(),
                           vocabulary=store.vocabulary)
