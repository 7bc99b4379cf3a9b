"""Training stage: a model trained on a feature store (teachers, baselines, and KD students).

Inputs:  a complete feature store; optionally a logits store (--logits) or a teacher checkpoint (--teacher).
Outputs: OUT/ with final.pt (the exported model), best.pt, wa.pt, results.json, metrics, curves.png,
         checkpoints/last.pt (resume state).
Resume:  --resume continues from checkpoints/last.pt exactly (model, optimiser, scheduler, sampler, RNG).
Launch under torchrun for DDP (one process per device).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.training.engine import TrainRequest, family, run_training
from pipeline.training.presets import resolve_config


def train(features: str | os.PathLike, arch: str, out: str | os.PathLike, *, preset: str = "demo",
          overrides: list[str] | None = None, config: dict[str, Any] | None = None, resume: bool = False, weights: str | None = None,
          new_head: bool = False, logits: str | None = None, teacher: str | None = None,
          device: str | None = None, allow_download: bool = False, progress: bool = True,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the engine with `config` (a resolved config, as the stage graph writes it) or else the preset
    with dotted overrides."""
    family(arch)
    if config is None:
        config = resolve_config(preset, overrides or [])
    request = TrainRequest(features=Path(features), arch=arch, config=config, out_dir=Path(out), resume=resume,
                           weights=Path(weights) if weights else None, new_head=new_head,
                           teacher_logits=Path(logits) if logits else None,
                           teacher_checkpoint=Path(teacher) if teacher else None, device=device,
                           allow_download=allow_download, progress=progress,
                           extra={"preset": preset, **(extra or {})})
    return run_training(request)
