import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd_pipe.pipeline.augment import (
    ViewParams,
    ViewSpec,
    apply_view,
    apply_views,
    augment_batch,
    mix_features,
    mix_targets,
    mixup_pairs,
    roll_time,
    spec_augment,
    step_seeds,
    view_params,
)

SPEC = ViewSpec(n_views=4, freq_mask=8, time_mask=20, mixup_rate=0.5, alpha=10.0, seed=7)
POOL = [f"clip{i}" for i in range(30)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _raw(shape, seed=0) -> torch.Tensor:
    """Raw log-mel-like values, never exactly zero."""
    return -4.0 - torch.rand(shape, generator=_gen(seed)) * 3.0


def _bands(out: torch.Tensor):
    """Per sample: (time rows all zero, freq columns all zero) as index arrays."""
    zero = out == 0
    return [(np.flatnonzero(z.all(1)), np.flatnonzero(z.all(0))) for z in zero.numpy()]


def test_spec_augment_masks_are_bands_of_zeros():
    x = _raw((2000, 50, 20))
    out = spec_augment(x, freq_mask=8, time_mask=10, generator=_gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    time_widths, freq_widths = [], []
    for (rows, cols), o, orig in zip(_bands(out), out, x):
        for idx in (rows, cols):
            assert idx.size == 0 or np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))  # contiguous
        expected = orig.clone()
        expected[rows, :] = 0
        expected[:, cols] = 0
        assert torch.equal(o, expected)  # zero exactly in the bands, untouched elsewhere
        time_widths.append(rows.size)
        freq_widths.append(cols.size)
    # width = floor(U * max_width): uniform on {0, .., max_width - 1}
    assert max(time_widths) == 9 and max(freq_widths) == 7
    assert np.mean(time_widths) == pytest.approx(4.5, abs=0.25)
    assert np.mean(freq_widths) == pytest.approx(3.5, abs=0.2)


def test_spec_augment_reproducible_and_options():
    x = _raw((8, 30, 16))
    a = spec_augment(x, 5, 10, generator=_gen(3))
    assert torch.equal(a, spec_augment(x, 5, 10, generator=_gen(3)))
    assert not torch.equal(a, spec_augment(x, 5, 10, generator=_gen(4)))
    assert torch.equal(spec_augment(x, 0, 0, generator=_gen(3)), x)
    big = spec_augment(x, 100, 100, generator=_gen(5))  # widths clamp to the axis length
    assert big.shape == x.shape
    filled = spec_augment(x, 5, 10, generator=_gen(3), mask_value=-1.5)
    assert torch.equal(filled == -1.5, a == 0)
    with pytest.raises(ValueError, match="frames, bins"):
        spec_augment(x[0], 5, 10)


def test_mixup_pairs_distribution():
    perm, lam = mixup_pairs(20000, rate=1.0, alpha=10.0, generator=_gen(0))
    assert sorted(perm.tolist()) == list(range(20000))
    assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lam.std().item() == pytest.approx(math.sqrt(1 / (4 * 21)), abs=0.01)  # Beta(10, 10)
    assert (lam > 0).all() and (lam < 1).all()
    _, lam = mixup_pairs(20000, rate=0.3, generator=_gen(1))
    assert (lam < 1).float().mean().item() == pytest.approx(0.3, abs=0.02)
    _, lam = mixup_pairs(100, rate=0.0, generator=_gen(2))
    assert torch.equal(lam, torch.ones(100))
    first = mixup_pairs(16, 0.5, generator=_gen(9))
    second = mixup_pairs(16, 0.5, generator=_gen(9))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(ValueError, match="rate"):
        mixup_pairs(4, 1.5)


@pytest.mark.parametrize("mode", ["power", "logmel"])
def test_rate_zero_is_identity(mode):
    x = _raw((6, 10, 4)).half()
    perm, lam = mixup_pairs(6, rate=0.0, generator=_gen(0))
    out = mix_features(x, perm, lam, mode)
    assert out.dtype == torch.float32 and torch.equal(out, x.float())


def test_mix_formulas():
    x = _raw((5, 10, 4)).double()
    perm = torch.tensor([1, 2, 3, 4, 0])
    lam = torch.tensor([0.3, 0.5, 0.9, 1.0, 0.45])
    a, b, w = x.numpy(), x[perm].numpy(), lam.double().numpy()[:, None, None]
    np.testing.assert_allclose(
        mix_features(x, perm, lam, "power").numpy(), np.log(w * np.exp(a) + (1 - w) * np.exp(b)), rtol=1e-12
    )
    np.testing.assert_allclose(mix_features(x, perm, lam, "logmel").numpy(), w * a + (1 - w) * b, rtol=1e-12)
    # a clip mixed with itself is unchanged in power mode
    same = mix_features(x.float(), torch.arange(5), lam, "power")
    torch.testing.assert_close(same, x.float(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        mix_features(x, perm, lam, "wave")


def test_mix_respects_padding():
    x = _raw((2, 10, 3))
    x[0, 6:] = 0.0  # clip 0 has 6 valid frames, then the store's zero padding
    x[1, 4:] = 0.0  # clip 1 has 4
    valid = torch.tensor([6, 4])
    lam = torch.tensor([0.6, 0.7])
    perm = torch.tensor([1, 0])
    out = mix_features(x, perm, lam, "power", valid_frames=valid)
    plain = mix_features(x, perm, lam, "power")
    assert torch.equal(out[:, :4], plain[:, :4])  # both valid: ordinary mix
    torch.testing.assert_close(out[0, 4:6], x[0, 4:6] + math.log(0.6))  # partner is silence there
    assert torch.equal(out[0, 6:], x[0, 6:])  # clip 0's own padding stays padding
    assert torch.equal(out[1, 4:], x[1, 4:])
    logmel = mix_features(x, perm, lam, "logmel", valid_frames=valid)
    assert torch.equal(logmel[0, 4:], x[0, 4:])


def test_mix_targets():
    y = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.uint8)
    out = mix_targets(y, torch.tensor([1, 0]), torch.tensor([0.7, 1.0]))
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.3, 1.0], [0.0, 1.0, 1.0]]))


AUGMENT = {"mixup_rate": 0.5, "mixup_alpha": 10.0, "mixup_mode": "power", "freq_mask": 6, "time_mask": 10}


def test_augment_batch_is_mixup_then_spec_augment_from_one_generator():
    x, y = _raw((8, 40, 16)), torch.eye(4)[torch.arange(8) % 4]
    valid = torch.tensor([40, 30, 40, 20, 40, 40, 35, 40])
    out = augment_batch(x, y, valid, AUGMENT, _gen(3))
    replay = _gen(3)
    perm, lam = mixup_pairs(8, 0.5, 10.0, replay)
    expected = spec_augment(mix_features(x, perm, lam, "power", valid), 6, 10, replay)
    assert torch.equal(out.perm, perm) and torch.equal(out.lam, lam) and (lam < 1).any()
    assert torch.equal(out.x, expected)
    assert torch.equal(out.y, mix_targets(y, perm, lam))
    again = augment_batch(x, y, valid, AUGMENT, _gen(3))
    assert torch.equal(again.x, out.x) and torch.equal(again.y, out.y)


def test_augment_batch_keeps_rows_unmixed():
    x, y = _raw((8, 40, 16)), torch.eye(4)[torch.arange(8) % 4]
    keep = torch.tensor([True, False] * 4)
    out = augment_batch(x, y, None, {**AUGMENT, "mixup_rate": 1.0, "freq_mask": 0, "time_mask": 0}, _gen(5), keep)
    assert (out.lam[keep] == 1).all() and (out.lam[~keep] < 1).all()
    assert torch.equal(out.x[keep], x[keep]) and torch.equal(out.y[keep], y[keep])


def test_roll_time_shifts_each_row_circularly():
    x = _raw((3, 10, 4))
    out = roll_time(x, torch.tensor([0, 3, -2]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], torch.roll(x[1], 3, dims=0)) and torch.equal(out[2], torch.roll(x[2], -2, dims=0))


def test_augment_batch_time_shift_rolls_after_the_masks_with_the_last_draws():
    x, y = _raw((8, 40, 16)), torch.eye(4)[torch.arange(8) % 4]
    plain = augment_batch(x, y, None, AUGMENT, _gen(3))
    shifted = augment_batch(x, y, None, {**AUGMENT, "time_shift": 12}, _gen(3))
    replay = _gen(3)
    mixup_pairs(8, 0.5, 10.0, replay)
    spec_augment(x, 6, 10, replay)
    shifts = torch.randint(-12, 13, (8,), generator=replay)
    assert shifts.abs().max() > 0 and shifts.abs().max() <= 12
    assert torch.equal(shifted.x, roll_time(plain.x, shifts)) and torch.equal(shifted.y, plain.y)


def test_views_with_time_shift_replay_exactly():
    spec = ViewSpec(n_views=3, freq_mask=8, time_mask=20, mixup_rate=0.0, alpha=10.0, seed=7, time_shift=30)
    params = [view_params(spec, clip, v, 100, 32, POOL) for clip in POOL for v in (1, 2)]
    assert all(abs(p.shift) <= 30 for p in params) and len({p.shift for p in params}) > 10
    no_shift = ViewSpec(**{**spec.to_dict(), "time_shift": 0})
    for clip in POOL[:5]:  # the shift is the last draw: masks and λ stay those of the unshifted spec
        a, b = view_params(spec, clip, 1, 100, 32, POOL), view_params(no_shift, clip, 1, 100, 32, POOL)
        assert (a.time_start, a.time_width, a.freq_start, a.freq_width, a.lam) == \
               (b.time_start, b.time_width, b.freq_start, b.freq_width, b.lam) and b.shift == 0
    x = _raw((2, 100, 32))
    rows = [view_params(spec, "clip1", 1, 100, 32, POOL), view_params(spec, "clip2", 2, 100, 32, POOL)]
    masked = apply_views(x, None, [dataclasses.replace(p, shift=0) for p in rows])
    assert torch.equal(apply_views(x, None, rows), roll_time(masked, torch.tensor([p.shift for p in rows])))
    legacy = {k: v for k, v in no_shift.to_dict().items() if k != "time_shift"}  # stores from before the option
    assert ViewSpec.from_dict(legacy) == no_shift


def test_step_seeds_depend_on_every_coordinate():
    base = step_seeds(0, 1, 2, 0)
    assert step_seeds(0, 1, 2, 0) == base  # a pure function: a resumed run redraws the same
    others = {step_seeds(*args) for args in ((1, 1, 2, 0), (0, 2, 2, 0), (0, 1, 3, 0), (0, 1, 2, 1))}
    assert len(others) == 4 and base not in others
    assert base[0] != base[1] and all(0 <= s < 2**63 for s in base)


def test_view_spec_round_trip_and_validation():
    assert ViewSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError, match="do not match"):
        ViewSpec.from_dict({**SPEC.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="n_views"):
        ViewSpec(0, 8, 20, 0.5, 10.0, 0)
    with pytest.raises(ValueError, match="mixup_rate"):
        ViewSpec(2, 8, 20, 1.5, 10.0, 0)


def test_view_params_properties():
    assert view_params(SPEC, "clip3", 0, 100, 32, POOL) == ViewParams(0, 0, 0, 0, None, 1.0)
    params = [view_params(SPEC, clip, v, 100, 32, POOL) for clip in POOL for v in range(1, 4)]
    assert len(set(params)) == len(params)  # views and clips differ
    for clip, p in zip([c for c in POOL for _ in range(3)], params):
        assert 0 <= p.time_width < 20 and p.time_start + p.time_width <= 100
        assert 0 <= p.freq_width < 8 and p.freq_start + p.freq_width <= 32
        assert (p.partner is None) == (p.lam == 1.0)
        assert p.partner != clip and (p.partner is None or p.partner in POOL)
    assert 0.3 < np.mean([p.partner is not None for p in params]) < 0.7
    # the pool changes only the partner, never the masks or λ
    other = view_params(SPEC, "clip3", 2, 100, 32, ["x", "y"])
    same = view_params(SPEC, "clip3", 2, 100, 32, POOL)
    assert (other.time_start, other.freq_width, other.lam) == (same.time_start, same.freq_width, same.lam)
    lonely = ViewSpec(3, 8, 20, 1.0, 10.0, 7)
    assert view_params(lonely, "clip3", 1, 100, 32, ["clip3"]).partner is None
    assert view_params(lonely, "clip3", 1, 100, 32, ["clip3", "clip4"]).partner == "clip4"
    with pytest.raises(ValueError, match="out of range"):
        view_params(SPEC, "clip3", 4, 100, 32, POOL)


SCRIPT = """
import sys, torch
from cmkd_pipe.pipeline.augment import ViewSpec, apply_view, view_params
spec = ViewSpec(**{spec!r})
pool = {pool!r}
x = torch.load(sys.argv[1])
views = [view_params(spec, "clip5", v, x.shape[1], x.shape[2], pool) for v in range(spec.n_views)]
partners = [x[pool.index(p.partner)] if p.partner else None for p in views]
out = torch.stack([apply_view(x[5], partner, p) for p, partner in zip(views, partners)])
torch.save((repr(views), out), sys.argv[2])
"""


def _views_here(x: torch.Tensor):
    views = [view_params(SPEC, "clip5", v, x.shape[1], x.shape[2], POOL) for v in range(SPEC.n_views)]
    partners = [x[POOL.index(p.partner)] if p.partner else None for p in views]
    return views, torch.stack([apply_view(x[5], partner, p) for p, partner in zip(views, partners)])


def test_views_are_bit_identical_across_processes(tmp_path: Path):
    x = _raw((30, 100, 32), seed=11).half()
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "views.py"
    script.write_text(SCRIPT.format(spec=SPEC.to_dict(), pool=POOL))
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        check=True, env=env, cwd=Path(__file__).resolve().parents[1],
    )
    their_views, their_out = torch.load(tmp_path / "out.pt")
    views, out = _views_here(x)
    assert their_views == repr(views)
    assert torch.equal(their_out, out)
    assert torch.equal(_views_here(x)[1], out)  # and across calls
    assert torch.equal(out[0], x[5].float())  # view 0 is clean
    for i in range(1, len(views)):
        assert not torch.equal(out[i], out[0]) and not torch.equal(out[i], out[i - 1])


def test_apply_view_masks_and_batch_agree():
    x = _raw((4, 60, 16), seed=2)
    params = [
        ViewParams(2, 3, 10, 5, None, 1.0),
        ViewParams(0, 0, 0, 0, "p", 0.4),
        ViewParams(14, 2, 55, 5, "p", 0.55),
        ViewParams(0, 0, 0, 0, None, 1.0),
    ]
    partner_x = _raw((4, 60, 16), seed=3)
    batch = apply_views(x, partner_x, params, mask_value=-4.2)
    for i, p in enumerate(params):
        single = apply_view(x[i], partner_x[i] if p.partner else None, p, mask_value=-4.2)
        assert torch.equal(batch[i], single)
    masked = batch[0] == -4.2
    assert masked[10:15].all() and masked[:, 2:5].all() and masked.sum() == 5 * 16 + 3 * 60 - 5 * 3
    assert torch.equal(batch[0][~masked], x[0][~masked])
    assert torch.equal(batch[3], x[3])
    with pytest.raises(ValueError, match="partner_x is None"):
        apply_view(x[1], None, params[1])
