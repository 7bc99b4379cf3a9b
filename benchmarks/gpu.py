"""One prepared GPU check (`make gpu-check`): the numbers that decide whether the pipeline uses a GPU well.

Writes one JSON (default benchmarks/gpu-check.json) with:
- teacher_logits: bf16-autocast inference clips/s of the teacher (AST base384, 10-s clips = 1024 frames x
  128 bins) at a few batch sizes, its measured FLOPs per clip and the share of the device's bf16 peak
  (from a small table of known devices; null for an unknown one);
- student: the paper pair's training step (EfficientNet-B2 student, AST base384 teacher, 128 x 1024):
  clips/s and data-time share with cached teacher logits (fp16 fbank + float32 logits copied from pinned
  host memory, cast on the device) and with an online teacher (its bf16 forward inside the step), each
  with torch.compile off and on; peak GPU memory.
Without CUDA it runs the same code on tiny configs on the CPU (this is what CI runs, to keep it working)
and says so in the JSON (`"device": "cpu"`, `"configs": "tiny"`); the CPU numbers mean nothing for a GPU.

    python -m benchmarks.gpu [--out FILE] [--steps N] [--tiny]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from cmkd_pipe.pipeline.losses import CMKDLoss
from cmkd_pipe.pipeline.models.factory import build_model

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of devices this may meet, from their makers' data sheets.
# torch names an H100 SXM "NVIDIA H100 80GB HBM3" and the PCIe card "NVIDIA H100 PCIe".
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}
PAPER = {"teacher": {"arch": "ast", "size": "base384", "fstride": 10, "tstride": 10},
         "student": {"arch": "cnn", "variant": "efficientnet_b2", "pooling": "mean"},
         "frames": 1024, "mels": 128, "classes": 200}
TINY = {"teacher": {"arch": "ast", "size": "custom", "embed_dim": 64, "depth": 2, "num_heads": 4,
                    "fstride": 16, "tstride": 16},
        "student": {"arch": "timm:test_efficientnet", "pooling": "mean"},
        "frames": 128, "mels": 64, "classes": 10}


def peak_tflops(name: str) -> float | None:
    """The bf16 peak of a device by its name (longest matching key), None when unknown."""
    hits = [key for key in BF16_PEAK_TFLOPS if key.lower() in name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def timed(fn: Callable[[], Any], steps: int, device: torch.device) -> float:
    """Median seconds of `fn` over `steps` runs after two warm-ups (synchronising on CUDA)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def flops_per_clip(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    return float(counter.get_total_flops())


def teacher_throughput(spec: dict, device: torch.device, steps: int, batches: list[int]) -> dict[str, Any]:
    model = build_model(spec["teacher"], spec["classes"], spec["mels"], spec["frames"]).to(device).eval()
    flops = flops_per_clip(model, torch.randn(1, spec["frames"], spec["mels"], device=device))
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = []
    for batch in batches:
        x = torch.randn(batch, spec["frames"], spec["mels"], device=device)

        def step() -> None:
            with torch.no_grad(), autocast(device):
                model(x)

        seconds = timed(step, steps, device)
        achieved = flops * batch / seconds / 1e12
        rows.append({"batch": batch, "clips_per_s": batch / seconds, "tflops": achieved,
                     "share_of_bf16_peak": achieved / peak if peak else None})
    return {"flops_per_clip": flops, "bf16_peak_tflops": peak, "by_batch": rows}


def student_steps(spec: dict, device: torch.device, steps: int, batch: int, compile_: bool) -> dict[str, Any]:
    """Clips/s and data-time share of a student step with cached logits and with an online teacher."""
    student = build_model(spec["student"], spec["classes"], spec["mels"], spec["frames"]).to(device).train()
    teacher = build_model(spec["teacher"], spec["classes"], spec["mels"], spec["frames"]).to(device).eval()
    teacher.requires_grad_(False)
    forward = torch.compile(student) if compile_ else student
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    loss = CMKDLoss(multilabel=True, lam=0.5, tau=1.0, form="sigmoid-kl")
    pin = device.type == "cuda"
    fbank = torch.randn(batch, spec["frames"], spec["mels"]).half()
    cached = torch.randn(batch, spec["classes"])
    targets = (torch.rand(batch, spec["classes"]) < 0.05).float()
    if pin:
        fbank, cached, targets = fbank.pin_memory(), cached.pin_memory(), targets.pin_memory()
    result = {}
    for mode in ("cached", "online"):
        data_seconds = []

        def step() -> None:
            start = time.perf_counter()
            x = fbank.to(device, non_blocking=True).float()
            y = targets.to(device, non_blocking=True)
            if mode == "cached":
                teacher_p = loss.teacher_probs(cached.to(device, non_blocking=True))
            else:
                with torch.no_grad(), autocast(device):
                    teacher_p = loss.teacher_probs(teacher(x).float())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            data_seconds.append(time.perf_counter() - start)
            with autocast(device):
                logits = forward(x)
            total, _ = loss(logits.float(), y, teacher_p)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

        seconds = timed(step, steps, device)
        prep = sorted(data_seconds[2:])[len(data_seconds[2:]) // 2]
        result[mode] = {"clips_per_s": batch / seconds, "step_ms": seconds * 1e3,
                        "prep_share": prep / seconds}  # host→device copy (+ the teacher forward when online)
    result["online_over_cached_step"] = result["online"]["step_ms"] / result["cached"]["step_ms"]
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu-check.json"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="tiny configs even on a GPU (a smoke run)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    spec = TINY if args.tiny or not cuda else PAPER
    batches = [8, 32, 64] if cuda else [2, 4]
    batch = 24 if cuda else 2
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "configs": "tiny" if spec is TINY else "paper", "torch": torch.__version__, "host": platform.node(),
        "note": None if cuda else "no CUDA here: tiny configs on the CPU, to keep the check working; "
                                  "run `make gpu-check` on a GPU for the numbers that matter",
        "teacher_logits": teacher_throughput(spec, device, args.steps, batches),
        "student": {"batch": batch},
    }
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for compile_ in (False, True) if cuda else (False,):
        report["student"]["compile" if compile_ else "eager"] = student_steps(spec, device, args.steps, batch,
                                                                              compile_)
    report["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
