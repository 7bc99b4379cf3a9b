"""Per-step learning-rate schedules (linear warm-up, then step decay, cosine or constant) as LambdaLR.

Step decay follows AST/PSLA: `MultiStepLR` stepped once per epoch with milestones
`range(decay_start_epoch, epochs, decay_every_epochs)`; a milestone m lowers the lr by `decay_factor`
once m epochs are done, so with AST's ESC-50 recipe (start 5, every 1, x0.85) epochs 1-5 run at the
base lr and epoch 6 at 0.85x. Here it is expressed per optimizer step, so the scheduler is stepped
after every optimizer step and its state resumes mid-epoch.

Warm-up: optimizer step s (0-based) of the first `warmup_steps` runs at lr * (s + 1) / warmup_steps.
AST/PSLA set lr * s / 1000 every 50 steps; the smooth form reaches the same ramp without the
staircase and without a first step at lr 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a scheduler is built, so checking a preset stays light
    import torch
    from torch.optim.lr_scheduler import LambdaLR

SCHEDULE_KINDS = ("step", "cosine", "constant")


@dataclass
class LrSchedule:
    """LR multiplier as a function of the optimizer step (0-based). Picklable, so LambdaLR saves it."""

    kind: str
    steps_per_epoch: int
    epochs: int
    warmup_steps: int = 1000
    decay_start_epoch: int | None = None
    decay_every_epochs: int = 1
    decay_factor: float = 0.5
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule.kind: {self.kind!r} is not one of {list(SCHEDULE_KINDS)}")
        if self.steps_per_epoch < 1 or self.epochs < 1:
            raise ValueError(f"schedule: steps_per_epoch ({self.steps_per_epoch}) and epochs ({self.epochs}) "
                             "must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.kind == "step":
            if self.decay_start_epoch is None or self.decay_start_epoch < 0:
                raise ValueError("schedule.decay_start_epoch: kind 'step' needs an epoch count >= 0 "
                                 f"after which the lr first decays, got {self.decay_start_epoch}")
            if self.decay_every_epochs < 1:
                raise ValueError(f"schedule.decay_every_epochs must be >= 1, got {self.decay_every_epochs}")
            if not 0.0 < self.decay_factor <= 1.0:
                raise ValueError(f"schedule.decay_factor must lie in (0, 1], got {self.decay_factor}")

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self._decay(step)

    def _decay(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            epoch = step // self.steps_per_epoch  # 0-based: epochs already completed
            passed = len(range(self.decay_start_epoch, min(epoch + 1, self.epochs), self.decay_every_epochs))
            return max(self.decay_factor ** passed, self.min_lr_ratio)
        total = self.steps_per_epoch * self.epochs
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps)))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, *, kind: str = "step", warmup_steps: int = 1000,
                    steps_per_epoch: int, epochs: int, decay_start_epoch: int | None = None,
                    decay_every_epochs: int = 1, decay_factor: float = 0.5, min_lr_ratio: float = 0.0) -> LambdaLR:
    """A LambdaLR to step after every optimizer step; the config's `schedule` section splats into it."""
    from torch.optim.lr_scheduler import LambdaLR

    schedule = LrSchedule(kind=kind, steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_steps=warmup_steps,
                          decay_start_epoch=decay_start_epoch, decay_every_epochs=decay_every_epochs,
                          decay_factor=decay_factor, min_lr_ratio=min_lr_ratio)
    return LambdaLR(optimizer, schedule)
