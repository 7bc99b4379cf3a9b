"""One prepared GPU check (`make gpu-check`): the numbers that decide whether the pipeline uses a GPU well.

Writes one JSON (default benchmarks/gpu-check.json) with:
- teacher_logits: bf16-autocast inference clips/s of the teacher (AST base384, 10-s clips = 1024 frames x
  128 bins) at a few batch sizes, its measured FLOPs per clip and the share of the device's bf16 peak
  (from a small table of known devices; null for an unknown one);
- student: the paper pair's training step (EfficientNet-B2 student, AST base384 teacher, 128 x 1024):
  clips/s and data-time share with cached teacher logits (fp16 fbank + float32 logits copied from pinned
  host memory, cast on the device) and with an online teacher (its bf16 forward inside the step), each
  with torch.compile off and on; peak GPU memory.
Variants are alternated (benchmarks/paired.py): every round runs each batch size, and each student
mode (cached / online, eager / compiled) for --steps steps; numbers are medians over --rounds rounds with
their min and max, and online/cached is the median of the per-round ratios.
Without CUDA it runs the same code on tiny configs on the CPU (this is what CI runs, to keep it working)
and says so in the JSON (`"device": "cpu"`, `"configs": "tiny"`); the CPU numbers mean nothing for a GPU.

    python -m benchmarks.gpu [--out FILE] [--steps N] [--rounds R] [--quick]
                             [--teacher ast-base384] [--student efficientnet-b2] [--shapes 128x1024]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.paired import MODELS, Seconds, alternate, model_spec, paired, parse_shapes, spread
from cmkd_pipe.pipeline.losses import CMKDLoss
from cmkd_pipe.pipeline.models.factory import build_model

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of devices this may meet, from their makers' data sheets.
# torch names an H100 SXM "NVIDIA H100 80GB HBM3" and the PCIe card "NVIDIA H100 PCIe".
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}
PAPER = {"teacher": MODELS["ast-base384"], "student": MODELS["efficientnet-b2"], "frames": 1024, "mels": 128,
         "classes": 200}
TINY = {"teacher": {"arch": "ast", "size": "custom", "embed_dim": 64, "depth": 2, "num_heads": 4,
                    "fstride": 16, "tstride": 16},
        "student": {"arch": "timm:test_efficientnet", "pooling": "mean"},
        "frames": 128, "mels": 64, "classes": 10}


def peak_tflops(name: str) -> float | None:
    """The bf16 peak of a device by its name (longest matching key), None when unknown."""
    hits = [key for key in BF16_PEAK_TFLOPS if key.lower() in name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def flops_per_clip(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    return float(counter.get_total_flops())


def teacher_throughput(spec: dict, device: torch.device, steps: int, rounds: int, batches: list[int]) -> dict[str, Any]:
    """bf16 inference clips/s of the teacher at each batch size (alternated), FLOPs and share of the peak."""
    model = build_model(spec["teacher"], spec["classes"], spec["mels"], spec["frames"]).to(device).eval()
    flops = flops_per_clip(model, torch.randn(1, spec["frames"], spec["mels"], device=device))
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    def forwards(batch: int):
        x = torch.randn(batch, spec["frames"], spec["mels"], device=device)

        def run() -> Seconds:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                with torch.no_grad(), autocast(device):
                    model(x)
            synchronize(device)
            return Seconds((time.perf_counter() - start) / steps)
        return run

    times = alternate({batch: forwards(batch) for batch in batches}, rounds, log=None)
    rows = []
    for batch in batches:
        seconds = spread(times[batch])
        achieved = flops * batch / seconds["median"] / 1e12
        rows.append({"batch": batch, "clips_per_s": batch / seconds["median"],
                     "clips_per_s_min_max": [batch / seconds["max"], batch / seconds["min"]], "tflops": achieved,
                     "share_of_bf16_peak": achieved / peak if peak else None})
    return {"flops_per_clip": flops, "bf16_peak_tflops": peak, "by_batch": rows}


def student_steps(spec: dict, device: torch.device, steps: int, rounds: int, batch: int,
                  compiled: list[bool]) -> dict[str, Any]:
    """Clips/s and data-time share of a student step with cached logits and with an online teacher, eager
    and (for each True in `compiled`) torch.compile'd, all alternated."""
    teacher = build_model(spec["teacher"], spec["classes"], spec["mels"], spec["frames"]).to(device).eval()
    teacher.requires_grad_(False)
    loss = CMKDLoss(multilabel=True, lam=0.5, tau=1.0, form="sigmoid-kl")
    fbank = torch.randn(batch, spec["frames"], spec["mels"]).half()
    cached = torch.randn(batch, spec["classes"])
    targets = (torch.rand(batch, spec["classes"]) < 0.05).float()
    if device.type == "cuda":
        fbank, cached, targets = fbank.pin_memory(), cached.pin_memory(), targets.pin_memory()
    shares: dict[tuple[str, str], list[float]] = {}

    def steps_of(forward, optimizer, mode: str, key: tuple[str, str]):
        shares[key] = []

        def run() -> Seconds:
            data = total = 0.0
            for _ in range(steps):
                start = time.perf_counter()
                x = fbank.to(device, non_blocking=True).float()
                y = targets.to(device, non_blocking=True)
                if mode == "cached":
                    teacher_p = loss.teacher_probs(cached.to(device, non_blocking=True))
                else:
                    with torch.no_grad(), autocast(device):
                        teacher_p = loss.teacher_probs(teacher(x).float())
                synchronize(device)
                ready = time.perf_counter()
                with autocast(device):
                    logits = forward(x)
                step_loss, _ = loss(logits.float(), y, teacher_p)
                optimizer.zero_grad(set_to_none=True)
                step_loss.backward()
                optimizer.step()
                synchronize(device)
                data, total = data + ready - start, total + time.perf_counter() - start
            shares[key].append(data / total)  # host->device copy (+ the teacher forward when online)
            return Seconds(total / steps)
        return run

    variants = {}
    for compile_ in compiled:
        student = build_model(spec["student"], spec["classes"], spec["mels"], spec["frames"]).to(device).train()
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
        forward = torch.compile(student) if compile_ else student
        for mode in ("cached", "online"):
            key = ("compile" if compile_ else "eager", mode)
            variants[key] = steps_of(forward, optimizer, mode, key)
    times = alternate(variants, rounds, log=None)
    result: dict[str, Any] = {"batch": batch}
    for (kind, mode), seconds in times.items():
        step = spread(seconds)
        result.setdefault(kind, {})[mode] = {
            "clips_per_s": batch / step["median"], "step_ms": step["median"] * 1e3,
            "step_ms_min_max": [step["min"] * 1e3, step["max"] * 1e3],
            "prep_share": spread(shares[kind, mode][-rounds:])["median"]}
    for kind in result.keys() - {"batch"}:
        ratio = paired(times[kind, "online"], times[kind, "cached"])
        result[kind]["online_over_cached_step"] = ratio["median"]
        result[kind]["online_over_cached_step_min_max"] = [ratio["min"], ratio["max"]]
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu-check.json"))
    parser.add_argument("--steps", type=int, default=10, help="forwards / training steps per variant and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds of every variant")
    parser.add_argument("--quick", "--tiny", dest="tiny", action="store_true",
                        help="tiny configs even on a GPU (a smoke run)")
    parser.add_argument("--teacher", help="teacher model (a name of benchmarks.paired.MODELS or JSON; "
                                          "default the paper's AST base384)")
    parser.add_argument("--student", help="student model, as --teacher (default EfficientNet-B2)")
    parser.add_argument("--shapes", help="input MELSxFRAMES (default 128x1024; one shape)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    base = TINY if args.tiny or not cuda else PAPER
    spec = dict(base)
    if args.teacher:
        spec["teacher"] = model_spec(args.teacher)
    if args.student:
        spec["student"] = model_spec(args.student)
    if args.shapes:
        (spec["mels"], spec["frames"]), = parse_shapes(args.shapes)
    batches = [8, 32, 64] if cuda else [2, 4]
    batch = 24 if cuda else 2
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "configs": "tiny" if base is TINY else "paper", "models": {k: spec[k] for k in ("teacher", "student")},
        "input": [spec["frames"], spec["mels"]], "rounds": args.rounds, "steps": args.steps,
        "torch": torch.__version__, "host": platform.node(),
        "note": None if cuda else "no CUDA here: tiny configs on the CPU, to keep the check working; "
                                  "run `make gpu-check` on a GPU for the numbers that matter",
        "teacher_logits": teacher_throughput(spec, device, args.steps, args.rounds, batches),
    }
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    report["student"] = student_steps(spec, device, args.steps, args.rounds, batch, [False, True] if cuda else [False])
    report["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    from cmkd_pipe.pipeline.records import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
