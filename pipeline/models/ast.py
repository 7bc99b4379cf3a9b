"""Audio Spectrogram Transformer (Gong et al. 2021) on timm's modern ViT `Block`.

Input: fbank [B, T, F] (frames, mel bins). It is viewed as a one-channel image [B, 1, F, T] and cut
into 16x16 patches with strides (fstride, tstride) (10/10 = overlap 6, the paper setting). A [CLS] and
a DeiT distillation token are prepended; the output is the mean of the two token outputs after the
final LayerNorm, and the head is LayerNorm + Linear. Every shape follows from `ast_dims` and
`patch_grid`; the input length is fixed per model (build a new model and adapt the position
embedding with `pipeline.models.weights.adapt_ast_to_frames` to change it).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from cmkd_pipe.pipeline.models.ast_options import (AST_SIZES, HEAD_NORM_EPS, IMAGENET_SOURCES, N_TOKENS,  # noqa: F401
                                         VIT_NORM_EPS, ASTConfig, ast_dims)

# size name -> (embed_dim, depth, num_heads) of the DeiT backbone it starts from

def patch_grid(n_mels: int, n_frames: int, patch: int, fstride: int, tstride: int) -> tuple[int, int]:
    """(frequency rows, time columns) of the patch grid: (F - patch) // stride + 1 per axis."""
    if n_mels < patch or n_frames < patch:
        raise ValueError(f"AST: input {n_frames} frames x {n_mels} mel bins is smaller than one {patch}x{patch} patch")
    return (n_mels - patch) // fstride + 1, (n_frames - patch) // tstride + 1


class PatchEmbed(nn.Module):
    """[B, T, F] fbank -> [B, f*t, D] patch embeddings (row-major over frequency, then time)."""

    def __init__(self, embed_dim: int, patch: int, fstride: int, tstride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=(patch, patch), stride=(fstride, tstride))

    def forward(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]
        return self.proj(x).flatten(2).transpose(1, 2)


class ASTEmbeddings(nn.Module):
    """Patch embeddings with the [CLS] and distillation tokens prepended, plus learned positions."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], patch: int, fstride: int, tstride: int,
                 drop_rate: float) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(embed_dim, patch, fstride, tstride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, N_TOKENS + grid[0] * grid[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.patch_embed(x)
        b = patches.shape[0]
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1)], dim=1)
        return self.pos_drop(torch.cat([tokens, patches], dim=1) + self.pos_embed)


class ASTHead(nn.Module):
    """LayerNorm + Linear on the pooled token (AST's `mlp_head`)."""

    def __init__(self, embed_dim: int, n_classes: int, eps: float = HEAD_NORM_EPS) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.fc = nn.Linear(embed_dim, n_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x))


class AST(nn.Module):
    """Audio Spectrogram Transformer: fbank [B, T, F] -> logits [B, C] (and the pooled embedding)."""

    def __init__(self, n_classes: int, n_mels: int, n_frames: int, *, size: str = "base384",
                 embed_dim: int | None = None, depth: int | None = None, num_heads: int | None = None,
                 patch: int = 16, fstride: int = 10, tstride: int = 10, drop_rate: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = VIT_NORM_EPS,
                 head_norm_eps: float = HEAD_NORM_EPS) -> None:
        super().__init__()
        embed_dim, depth, num_heads = ast_dims(size, embed_dim, depth, num_heads)
        self.n_classes, self.n_mels, self.input_frames = n_classes, n_mels, n_frames
        self.grid = patch_grid(n_mels, n_frames, patch, fstride, tstride)
        self.config: dict[str, Any] = {
            "arch": "ast", "size": size, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
            "patch": patch, "fstride": fstride, "tstride": tstride, "drop_rate": drop_rate,
            "drop_path": drop_path, "norm_eps": norm_eps, "head_norm_eps": head_norm_eps,
        }
        self.embeddings = ASTEmbeddings(embed_dim, self.grid, patch, fstride, tstride, drop_rate)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth ramp
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=drop_rate, drop_path=rate,
                  norm_layer=partial(nn.LayerNorm, eps=norm_eps))
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = ASTHead(embed_dim, n_classes, head_norm_eps)
        self.blocks.apply(_init_vit_linear)

    @property
    def embed_dim(self) -> int:
        return self.config["embed_dim"]

    def set_norm_eps(self, norm_eps: float, head_norm_eps: float) -> None:
        """Use these LayerNorm eps (the encoder's, the head's), e.g. those of imported weights' config."""
        for module in (*self.blocks.modules(), self.norm):
            if isinstance(module, nn.LayerNorm):
                module.eps = norm_eps
        self.head.norm.eps = head_norm_eps
        self.config.update(norm_eps=norm_eps, head_norm_eps=head_norm_eps)

    def reset_head(self) -> None:
        """Re-initialise the classification head (used when importing weights with a new head)."""
        self.head.reset_parameters()

    def forward(self, x: Tensor, return_embedding: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.input_frames, self.n_mels):
            raise ValueError(
                f"AST: expected fbank [B, {self.input_frames}, {self.n_mels}] (frames, mel bins), "
                f"got {tuple(x.shape)}"
            )
        h = self.embeddings(x)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        embedding = (h[:, 0] + h[:, 1]) / 2
        logits = self.head(embedding)
        return (logits, embedding) if return_embedding else logits


def _init_vit_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_ast(config: ASTConfig, n_classes: int, n_mels: int, n_frames: int) -> AST:
    """The AST family's model for `config` (registered in pipeline.models.ast_options)."""
    return AST(n_classes, n_mels, n_frames, size=config.size, embed_dim=config.embed_dim, depth=config.depth,
               num_heads=config.num_heads, patch=config.patch, fstride=config.fstride, tstride=config.tstride,
               drop_rate=config.drop_rate, drop_path=config.drop_path, norm_eps=config.norm_eps,
               head_norm_eps=config.head_norm_eps)
