"""The training-config schema: one dataclass per preset section, every field with a default and a doc.

A resolved config is a dict {section: {field: value}} with exactly these sections and fields (a missing
field takes its default). Any field except those of `model` may instead hold a per-family dict keyed by
model-family names, e.g. `optim.lr: {cnn: 1.0e-3, ast: 1.0e-4}`; each value has the field's type. The
`model` section is `{<family>: {<that family's options>, pretrained}}`, the options being the fields of
the family's typed config (pipeline.models.registry). Semantic checks (ranges, choices, epoch ranges)
live in pipeline.training.presets; this module knows names and types.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FeaturesSection:
    """What the feature store must hold (checked against it before training)."""

    target_frames: int = 1024  # frames per clip after padding/trimming (10 ms hop)
    num_mel_bins: int = 128  # Kaldi fbank mel bins
    codec: str = "blosc-lz4-bitshuffle"  # fbank compression of the feature stage (pipeline.stores.codecs)


@dataclass(frozen=True)
class DataSection:
    """Which clips train, validate and test, and how they are drawn."""

    train: str = "train"  # split spec of the training clips (e.g. train, fold!=1)
    val: str = "val"  # split spec validated every epoch (model selection)
    test: str = "eval"  # split spec reported as the test result
    balanced: bool = False  # draw clips with the manifest weights (WeightedRandomSampler)
    epoch_len: int | None = None  # clips drawn per epoch (null: the training-set size)
    batch_size: int = 12  # clips per optimiser step (per process under DDP)
    loader_workers: int | None = None  # DataLoader worker processes preparing steps (0: in the training process;
    # null: 0 on the CPU, where they compete with the step for the cores, AUTO_GPU_WORKERS with CUDA)
    prefetch: int = 2  # steps each loader worker prepares ahead (with loader_workers > 0)


@dataclass(frozen=True)
class NormSection:
    """Input normalisation x' = (x - mean) / (divisor * std)."""

    source: str = "store"  # store (statistics the features stage computed) | published
    published_stats: str | None = None  # audioset | esc50 | fsd50k (with source: published)
    divisor: float = 2.0  # AST divides by 2 std, PSLA by 1


@dataclass(frozen=True)
class OptimSection:
    """Optimiser."""

    name: str = "adam"  # adam | adamw
    lr: float = 1.0e-4  # peak learning rate
    weight_decay: float = 5.0e-7  # AST/PSLA value
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])  # Adam betas (AST/PSLA value)
    grad_clip: float | None = None  # max gradient norm (null: no clipping)


@dataclass(frozen=True)
class ScheduleSection:
    """Learning-rate schedule (pipeline.training.schedule)."""

    kind: str = "step"  # step | cosine | constant
    warmup_steps: int = 0  # linear warm-up over the first N optimiser steps
    decay_start_epoch: int | None = None  # finished epochs after which the lr first drops (step)
    decay_every_epochs: int = 1  # epochs between drops (step)
    decay_factor: float = 0.5  # lr multiplier at each drop (step)
    min_lr_ratio: float = 0.0  # floor of the cosine schedule, as a share of lr


@dataclass(frozen=True)
class TrainSection:
    """The training loop."""

    epochs: int = 10  # epochs, counted from 1
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # channels_last memory for families that prefer it (CNNs; also on CPU)
    seed: int = 0  # seed of the model, sampler and augmentation
    deterministic: bool = False  # torch deterministic algorithms (slower)
    checkpoint_every_steps: int | None = None  # also save the resume state every N steps (null: epoch ends)


@dataclass(frozen=True)
class AugmentSection:
    """SpecAugment and mixup."""

    freq_mask: int = 0  # widest frequency mask, in mel bins
    time_mask: int = 0  # widest time mask, in frames
    mixup_rate: float = 0.0  # share of clips mixed with another
    mixup_alpha: float = 10.0  # mixup weight ~ Beta(alpha, alpha)
    mixup_mode: str = "power"  # power (waveform-equivalent) | logmel
    time_shift: int = 0  # widest circular time shift (roll), in frames (0: none)
    mask_fill: str = "zero"  # masked cells: zero (raw 0, as AST) | mean (the store mean: 0 after normalising)


@dataclass(frozen=True)
class AverageSection:
    """Weight averaging and the checkpoint ensemble."""

    wa_start_epoch: int | None = None  # first epoch averaged (null with wa_end_epoch: no averaging)
    wa_end_epoch: int | None = None  # last epoch averaged, inclusive
    ensemble: bool = True  # report the cumulative ensemble of every epoch's test predictions (scores test every epoch)


@dataclass(frozen=True)
class KdSection:
    """Knowledge distillation (students only)."""

    lam: float = 0.5  # weight of the label loss; 1 - lam weighs the teacher term
    tau: float = 1.0  # temperature applied to the teacher logits
    form: str = "softmax-kl"  # KD loss form (pipeline.losses)
    tau2_scaling: bool = False  # multiply the KD term by tau^2
    views: int = 1  # teacher-logit views per clip the teacher-logits stage writes


@dataclass(frozen=True)
class EvalSection:
    """Model selection and reporting."""

    metric: str = "accuracy"  # accuracy | mAP
    every_epochs: int = 1  # score the validation split every N epochs (and after the last); best epoch among them


# Settings that cannot change a result (how fast, how often a state is saved): left out of a stage's identity
# (stages/graph.py) and of the config a resumed run must match.
RUNTIME_KEYS = (("train", "compile"), ("train", "checkpoint_every_steps"), ("data", "loader_workers"),
                ("data", "prefetch"), ("features", "codec"))  # (features.codec: how the store's bytes are compressed)


SECTIONS: dict[str, type | None] = {
    "features": FeaturesSection, "data": DataSection, "norm": NormSection, "model": None,
    "optim": OptimSection, "schedule": ScheduleSection, "train": TrainSection, "augment": AugmentSection,
    "average": AverageSection, "kd": KdSection, "eval": EvalSection,
}  # section -> its dataclass (model: per family, from the registry)


@dataclass(frozen=True)
class ModelExtras:
    """Keys of a `model.<family>` section besides the family's model options."""

    pretrained: str | None = None  # weights to start from: null | imagenet | a local file (any format weights.py reads)
