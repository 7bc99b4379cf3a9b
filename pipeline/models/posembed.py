"""Positional-embedding adaptation between patch grids (AST's rule), as pure functions.

A grid is [D, F, T]: embedding dim, frequency rows, time columns. Each axis is adapted on its own:
a centred window is cut when the new axis is shorter or equal, bilinear interpolation
(align_corners=False) is used when it is longer. Time is adapted first, then frequency, as AST does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _centre_cut(grid: Tensor, size: int, dim: int) -> Tensor:
    start = grid.shape[dim] // 2 - size // 2
    return grid.narrow(dim, start, size)


def adapt_pos_grid(grid: Tensor, f2: int, t2: int) -> Tensor:
    """Adapt a [D, F1, T1] position grid to [D, f2, t2]: centre-cut to shrink, bilinear to grow."""
    if grid.dim() != 3:
        raise ValueError(f"position grid: expected [D, F, T], got shape {tuple(grid.shape)}")
    if f2 < 1 or t2 < 1:
        raise ValueError(f"position grid: target size must be positive, got ({f2}, {t2})")
    dtype = grid.dtype
    out = grid.float().unsqueeze(0)  # [1, D, F1, T1] for interpolate
    f1, t1 = out.shape[2], out.shape[3]
    if t2 <= t1:
        out = _centre_cut(out, t2, dim=3)
    else:
        out = F.interpolate(out, size=(f1, t2), mode="bilinear", align_corners=False)
    if f2 <= f1:
        out = _centre_cut(out, f2, dim=2)
    else:
        out = F.interpolate(out, size=(f2, t2), mode="bilinear", align_corners=False)
    return out.squeeze(0).contiguous().to(dtype)


def adapt_pos_embed(
    pos_embed: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], n_tokens: int = 2
) -> Tensor:
    """Adapt a flat [1, n_tokens + F1*T1, D] embedding (token slots first, patches row-major over
    frequency then time) to the [1, n_tokens + f2*t2, D] layout of `dst_grid`; token slots are kept."""
    f1, t1 = src_grid
    f2, t2 = dst_grid
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[1] != n_tokens + f1 * t1:
        raise ValueError(
            f"position embedding: shape {tuple(pos_embed.shape)} does not fit {n_tokens} token slots "
            f"+ a {f1}x{t1} grid (expected [1, {n_tokens + f1 * t1}, D])"
        )
    if (f1, t1) == (f2, t2):
        return pos_embed.clone()
    dim = pos_embed.shape[2]
    tokens, patches = pos_embed[:, :n_tokens], pos_embed[0, n_tokens:]
    grid = patches.transpose(0, 1).reshape(dim, f1, t1)
    new = adapt_pos_grid(grid, f2, t2).reshape(dim, f2 * t2).transpose(0, 1).unsqueeze(0)
    return torch.cat([tokens, new], dim=1)
