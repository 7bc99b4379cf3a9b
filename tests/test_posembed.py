"""Positional-embedding adaptation: AST's centre-cut / bilinear rule, per axis."""
import pytest
import torch

from cmkd_pipe.pipeline.models.ast import patch_grid
from cmkd_pipe.pipeline.models.posembed import adapt_pos_embed, adapt_pos_grid

D = 4


@pytest.mark.parametrize("frames", [128, 512, 1024, 3000])
@pytest.mark.parametrize("stride", [10, 12, 16])
@pytest.mark.parametrize("source", [(24, 24), (14, 14), (12, 101)])
def test_shapes_for_every_length_and_stride(frames, stride, source):
    f2, t2 = patch_grid(128, frames, 16, stride, stride)
    grid = torch.randn(D, *source)
    assert adapt_pos_grid(grid, f2, t2).shape == (D, f2, t2)
    flat = torch.randn(1, 2 + source[0] * source[1], D)
    assert adapt_pos_embed(flat, source, (f2, t2)).shape == (1, 2 + f2 * t2, D)


def test_patch_grid_matches_published_sizes():
    assert patch_grid(128, 1024, 16, 10, 10) == (12, 101)  # 1212 patches, pos_embed [1, 1214, 768]
    assert patch_grid(128, 512, 16, 10, 10) == (12, 50)  # ESC-50: 600 patches
    assert patch_grid(128, 1024, 16, 16, 16) == (8, 64)
    with pytest.raises(ValueError, match="smaller than one"):
        patch_grid(128, 8, 16, 10, 10)


def test_centre_cut_is_exactly_the_centre():
    grid = torch.randn(D, 24, 24)
    assert torch.equal(adapt_pos_grid(grid, 12, 12), grid[:, 6:18, 6:18])
    assert torch.equal(adapt_pos_grid(grid, 5, 24), grid[:, 12 - 2:12 - 2 + 5, :])
    # AST's AudioSet rule for shorter clips: columns 50 - t//2 ... of the 12x101 grid
    audioset = torch.randn(D, 12, 101)
    assert torch.equal(adapt_pos_grid(audioset, 12, 50), audioset[:, :, 25:75])
    assert torch.equal(adapt_pos_grid(audioset, 12, 101), audioset)


def test_bilinear_growth_keeps_corners_and_order():
    ramp = torch.arange(24.0).repeat(D, 24, 1)  # value = time column
    grown = adapt_pos_grid(ramp, 12, 101)  # frequency cut, time grown
    assert grown.shape == (D, 12, 101)
    assert torch.all(grown[..., 1:] >= grown[..., :-1])
    assert grown[..., 0].eq(0).all() and grown[..., -1].eq(23).all()
    assert torch.allclose(grown, grown[:, :1, :].expand_as(grown))  # unchanged along frequency
    rows = torch.arange(8.0).view(1, 8, 1).repeat(D, 1, 3)  # value = frequency row
    taller = adapt_pos_grid(rows, 20, 3)
    assert torch.all(taller[:, 1:] >= taller[:, :-1]) and taller[:, 0].eq(0).all() and taller[:, -1].eq(7).all()


def test_growth_interpolates_between_neighbours():
    grid = torch.tensor([[[0.0, 10.0]]])  # D=1, one row, two columns
    grown = adapt_pos_grid(grid, 1, 4)
    assert torch.allclose(grown, torch.tensor([[[0.0, 2.5, 7.5, 10.0]]]))


def test_flat_embedding_keeps_token_slots_and_row_major_layout():
    f1, t1 = 3, 5
    flat = torch.randn(1, 2 + f1 * t1, D)
    out = adapt_pos_embed(flat, (f1, t1), (3, 3))
    assert torch.equal(out[:, :2], flat[:, :2])
    grid = flat[0, 2:].reshape(f1, t1, D)  # row-major: frequency outer, time inner
    assert torch.equal(out[0, 2:].reshape(3, 3, D), grid[:, 1:4])
    same = adapt_pos_embed(flat, (f1, t1), (f1, t1))
    assert torch.equal(same, flat) and same is not flat


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        adapt_pos_embed(torch.randn(1, 10, D), (3, 3), (2, 2))
    with pytest.raises(ValueError, match=r"\[D, F, T\]"):
        adapt_pos_grid(torch.randn(2, 2), 1, 1)
    with pytest.raises(ValueError, match="positive"):
        adapt_pos_grid(torch.randn(D, 2, 2), 0, 1)


def test_dtype_is_kept():
    grid = torch.randn(D, 4, 4, dtype=torch.float16)
    assert adapt_pos_grid(grid, 2, 9).dtype == torch.float16
