"""The AST family's options and its registration, without torch: planning and config checks read them;
the model itself (pipeline.models.ast) is imported when a model is built."""
from __future__ import annotations

from dataclasses import dataclass

from cmkd_pipe.pipeline.models.registry import lazy_builder, register_family

AST_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny224": (192, 12, 3),
    "small224": (384, 12, 6),
    "base224": (768, 12, 12),
    "base384": (768, 12, 12),
}
# size name -> (timm DeiT distilled model, side of its square ImageNet position grid)
IMAGENET_SOURCES: dict[str, tuple[str, int]] = {
    "tiny224": ("deit_tiny_distilled_patch16_224", 14),
    "small224": ("deit_small_distilled_patch16_224", 14),
    "base224": ("deit_base_distilled_patch16_224", 14),
    "base384": ("deit_base_distilled_patch16_384", 24),
}
N_TOKENS = 2  # [CLS] + distillation token
VIT_NORM_EPS = 1e-6  # timm/DeiT LayerNorm eps inside the encoder
HEAD_NORM_EPS = 1e-5  # the official AST's mlp_head LayerNorm (torch's default)


@dataclass(frozen=True)
class ASTConfig:
    """Options of the AST family; the checks raise one-line ValueErrors naming the option."""

    arch: str = "ast"  # always "ast"
    size: str = "base384"  # tiny224 | small224 | base224 | base384 (DeiT backbones) | custom
    embed_dim: int | None = None  # token width (size "custom" only; null: given by size)
    depth: int | None = None  # transformer blocks (size "custom" only)
    num_heads: int | None = None  # attention heads (size "custom" only)
    patch: int = 16  # square patch side, in fbank bins/frames
    fstride: int = 10  # patch stride over frequency (10: overlap 6, the paper setting)
    tstride: int = 10  # patch stride over time
    drop_rate: float = 0.0  # dropout after the position embedding and in the blocks, in [0, 1)
    drop_path: float = 0.0  # largest stochastic-depth rate (ramped over the blocks), in [0, 1)
    norm_eps: float = VIT_NORM_EPS  # eps of the encoder LayerNorms (timm/DeiT 1e-6; a HF config's layer_norm_eps)
    head_norm_eps: float = HEAD_NORM_EPS  # eps of the head LayerNorm (AST's mlp_head: torch's 1e-5)

    def __post_init__(self) -> None:
        ast_dims(self.size, self.embed_dim, self.depth, self.num_heads)  # raises on bad sizes
        for name in ("patch", "fstride", "tstride"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config: option {name!r} of arch 'ast' must be >= 1, got {getattr(self, name)}")
        for name in ("drop_rate", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model config: {name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("norm_eps", "head_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model config: {name} must be > 0, got {getattr(self, name)!r}")


def ast_dims(size: str, embed_dim: int | None, depth: int | None, num_heads: int | None) -> tuple[int, int, int]:
    """(embed_dim, depth, num_heads) for a named size, or the explicit values for size 'custom'."""
    given = (embed_dim, depth, num_heads)
    if size == "custom":
        if None in given:
            raise ValueError("AST size 'custom' needs embed_dim, depth and num_heads")
        if embed_dim % num_heads:
            raise ValueError(f"AST: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        return embed_dim, depth, num_heads
    if size not in AST_SIZES:
        raise ValueError(f"AST: unknown size {size!r}; known: {sorted(AST_SIZES) + ['custom']}")
    dims = AST_SIZES[size]
    if any(g is not None and g != d for g, d in zip(given, dims)):
        raise ValueError(f"AST size {size!r} is {dims} (embed_dim, depth, num_heads); use size 'custom' for {given}")
    return dims


register_family("ast", display_name="AST", config=ASTConfig, weight_formats=("timm-vit", "ast-official", "ast-hf",
                                                                            "native-ast"), imagenet_format="timm-vit")(
    lazy_builder("cmkd_pipe.pipeline.models.ast", "build_ast"))
