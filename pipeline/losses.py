"""Task losses and the CMKD loss (Gong et al. 2022):

    L = λ · L_task(ψ(z_s), y) + (1 − λ) · L_KD(ψ(z_s), ψ(z_t / τ))

τ divides the teacher logits only. The KD term takes the teacher as a probability tensor (see
`teacher_probs`), so two teachers' probabilities can be mixed with a mixup λ before the loss.

A teacher that scores only some classes (an imported teacher's label map) gives probabilities over those
columns; `CMKDLoss.kd_classes` names them, and the KD term compares the student's logits of exactly those
classes (softmax-kl: the softmax over them, for student and teacher alike; sigmoid forms: per class).
The task loss always covers every class.

KD forms:
- ``softmax-kl`` (default): KL(p_t ‖ softmax(z_s)), summed over classes, mean over the batch
  ("batchmean"); used for multi-label data too, as the authors' later KD code (DASS) does.
- ``sigmoid-kl``: per-class Bernoulli KL between sigmoid(z_t/τ) and sigmoid(z_s), mean over
  batch × classes. Its gradient equals that of ``bce``; the value differs by the teacher's entropy.
- ``bce``: BCEWithLogits of z_s against p_t, mean over batch × classes (EfficientAT style). It is a
  cross-entropy, so it is NOT zero when student and teacher agree: its minimum is the mean
  Bernoulli entropy of p_t.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KD_FORMS = ("softmax-kl", "sigmoid-kl", "bce")


def _check_form(form: str) -> None:
    if form not in KD_FORMS:
        raise ValueError(f"KD loss form {form!r} is unknown; choose one of {', '.join(KD_FORMS)}")


def task_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Ground-truth loss: BCEWithLogits (mean over batch × classes) for multi-label data, else
    cross-entropy against target distributions (one-hot or mixup-soft), mean over the batch."""
    logits, targets = logits.float(), targets.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def teacher_probs(teacher_logits: torch.Tensor, form: str, tau: float) -> torch.Tensor:
    """The teacher target each form needs: softmax(z_t/τ) for softmax-kl, sigmoid(z_t/τ) otherwise."""
    _check_form(form)
    if tau <= 0:
        raise ValueError(f"KD temperature tau must be > 0, got {tau}")
    scaled = teacher_logits.float() / tau
    return torch.softmax(scaled, dim=-1) if form == "softmax-kl" else torch.sigmoid(scaled)


def kd_loss(student_logits: torch.Tensor, teacher_p: torch.Tensor, form: str) -> torch.Tensor:
    """Distillation term between student logits and teacher probabilities (see module docstring)."""
    _check_form(form)
    if student_logits.shape != teacher_p.shape:
        raise ValueError(
            f"KD loss: student logits {tuple(student_logits.shape)} and teacher probabilities "
            f"{tuple(teacher_p.shape)} differ in shape; check the teacher store's class count"
        )
    z, p = student_logits.float(), teacher_p.float()
    if form == "softmax-kl":
        return F.kl_div(F.log_softmax(z, dim=-1), p, reduction="batchmean")
    if form == "bce":
        return F.binary_cross_entropy_with_logits(z, p)
    # Bernoulli KL in log space: p·(log p − log σ(z)) + (1−p)·(log(1−p) − log σ(−z)); xlogy gives 0·log 0 = 0.
    q = 1.0 - p
    kl = torch.xlogy(p, p) - p * F.logsigmoid(z) + torch.xlogy(q, q) - q * F.logsigmoid(-z)
    return kl.mean()


@dataclass
class CMKDLoss:
    """λ-weighted sum of the task loss and the KD loss; without a teacher, the plain task loss.

    ``tau2_scaling`` multiplies the KD term by τ² (Hinton); CMKD itself uses no τ² factor.
    ``kd_classes`` (student logit columns, in the teacher's column order) restricts the KD term to them.
    """

    multilabel: bool
    lam: float = 0.5
    tau: float = 1.0
    form: str = "softmax-kl"
    tau2_scaling: bool = False
    kd_classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_form(self.form)
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"CMKD loss: lam must be in [0, 1], got {self.lam}")
        if self.tau <= 0:
            raise ValueError(f"CMKD loss: tau must be > 0, got {self.tau}")

    def teacher_probs(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Teacher target for this loss's form and temperature."""
        return teacher_probs(teacher_logits, self.form, self.tau)

    def __call__(
        self, student_logits: torch.Tensor, targets: torch.Tensor, teacher_p: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (total loss, detached parts {"task", "kd"}); "kd" only when a teacher is given."""
        task = task_loss(student_logits, targets, self.multilabel)
        if teacher_p is None:
            return task, {"task": task.detach()}
        if self.kd_classes is not None:
            student_logits = student_logits[:, torch.as_tensor(self.kd_classes, device=student_logits.device)]
        kd = kd_loss(student_logits, teacher_p, self.form)
        if self.tau2_scaling:
            kd = kd * self.tau**2
        total = self.lam * task + (1.0 - self.lam) * kd
        return total, {"task": task.detach(), "kd": kd.detach()}
