"""The CNN family's options and its registration, without torch: planning and config checks read them;
the model itself (pipeline.models.cnn) is imported when a model is built."""
from __future__ import annotations

from dataclasses import dataclass

from cmkd_pipe.pipeline.models.registry import lazy_builder, register_family

EFFICIENTNET_VARIANTS: tuple[str, ...] = tuple(f"efficientnet_b{k}" for k in range(8)) + tuple(
    f"tf_efficientnet_b{k}" for k in range(8)
)  # tf_*: TF 'same' padding and BN eps 1e-3, the arithmetic of PSLA's efficientnet_pytorch models
POOLINGS = ("mean", "attention")
ATTENTION_EPS = 1e-7


@dataclass(frozen=True)
class CNNConfig:
    """Options of the CNN family; the checks raise one-line ValueErrors naming the option."""

    arch: str = "cnn"  # "cnn" (the EfficientNet `variant`) or "timm:NAME" (any timm CNN as backbone)
    variant: str = "efficientnet_b2"  # EfficientNet of arch "cnn" (CMKD: B2); "timm:NAME" sets it to NAME
    pooling: str = "mean"  # "mean" (CMKD) or "attention" (PSLA's multi-head attention pooling)
    heads: int = 4  # attention heads (pooling "attention" only)
    drop_rate: float = 0.0  # dropout before the classifier, in [0, 1)
    drop_path: float = 0.0  # stochastic depth of the backbone, in [0, 1)

    def __post_init__(self) -> None:
        if self.arch.startswith("timm:"):
            object.__setattr__(self, "variant", self.arch[len("timm:"):])
        elif self.variant not in EFFICIENTNET_VARIANTS:
            raise ValueError(
                f"model config: unknown cnn variant {self.variant!r}; known: {list(EFFICIENTNET_VARIANTS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"model config: unknown pooling {self.pooling!r}; known: {list(POOLINGS)}")
        if self.heads < 1:
            raise ValueError(f"model config: option 'heads' of arch {self.arch!r} must be >= 1, got {self.heads}")
        for name in ("drop_rate", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model config: {name} must be in [0, 1), got {getattr(self, name)!r}")


register_family("cnn", display_name="CNN (EfficientNet)", config=CNNConfig, archs=("cnn", "timm:?*"),
                 weight_formats=("timm-cnn", "psla", "native-cnn"), imagenet_format="timm-cnn", channels_last=True)(
    lazy_builder("cmkd_pipe.pipeline.models.cnn", "build_cnn"))
