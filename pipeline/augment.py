"""Batch augmentation (SpecAugment, feature-domain mixup) and deterministic teacher views.

`augment_batch` is a training step's augmentation (mixup, then SpecAugment) as a pure function of the
batch and a torch.Generator; `step_seeds(seed, epoch, step, rank)` gives that generator's seed, so a
step's draws never depend on what ran before it (exact resume, also under DDP).

Feature-domain mixup: AST mixes waveforms, λ·w_a + (1 − λ)·w_b with λ ~ Beta(10, 10), and recomputes
the fbank. We mix the stored log-mel instead, so no fbank is recomputed. Mode "power" mixes mel
powers, log(λ·e^a + (1 − λ)·e^b): the mixture of two uncorrelated sources up to a level offset (the
waveform mix gives weights λ², (1 − λ)², about 3 dB quieter at λ = 0.5), and mixing a clip with
itself returns it unchanged, as the waveform mix does. Mode "logmel" mixes the log-mel linearly
(EfficientAT). Both take the RAW (un-normalised) natural-log mel fbank; normalise afterwards.

Padding: the store pads clips with raw zeros (power 1, louder than most content). Given the clips'
valid frame counts, the mix follows AST, whose mix keeps the first clip's length: frames past the
clip's end stay padding, and frames where only the partner is padding take the clip alone (in power
mode weighted by λ, i.e. mixed with silence; in logmel mode unchanged). Without them every frame is
mixed.

Teacher views: view k of a clip is a pure function of (seed, clip id, k), so the logits stage and
the student both rebuild exactly the input the teacher saw for that view ("consistent teaching"
with cached logits). View 0 is always the clean input.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

MIX_MODES = ("power", "logmel")
MASK_FILLS = ("zero", "mean")  # what masked cells hold: raw 0 (AST) or the store mean (0 after normalising)


def mask_fill_value(fill: str, mean: float) -> float:
    """The raw log-mel value SpecAugment writes into masked cells for `fill` given the store's mean."""
    if fill not in MASK_FILLS:
        raise ValueError(f"mask fill {fill!r} is unknown; choose one of {', '.join(MASK_FILLS)}")
    return 0.0 if fill == "zero" else float(mean)


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """n uniforms in [0, 1) drawn on the generator's device (or `device`), returned on `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=where, dtype=torch.float64).to(device)


def _band_bounds(size: int, max_width: int, u_width: torch.Tensor, u_start: torch.Tensor) -> torch.Tensor:
    """[B, 2] (start, end) of one mask band per sample, torchaudio's rule: v = u·W, start = ⌊u'·(size − v)⌋,
    width = ⌊v⌋."""
    value = u_width * min(max_width, size)
    start = (u_start * (size - value)).long()
    return torch.stack([start, start + value.long()], dim=1)


def _draw_bands(batch: int, frames: int, bins: int, freq_mask: int, time_mask: int,
                generator: torch.Generator | None) -> torch.Tensor:
    """[B, 4] (time start, time end, freq start, freq end) of one time and one frequency mask per sample,
    from 4·B uniforms of `generator` (the draws of `spec_augment`)."""
    if freq_mask < 0 or time_mask < 0:
        raise ValueError(f"spec_augment: mask widths must be >= 0, got freq {freq_mask}, time {time_mask}")
    u = _uniform(4 * batch, generator, torch.device("cpu")).view(4, batch)
    return torch.cat([_band_bounds(frames, time_mask, u[0], u[1]), _band_bounds(bins, freq_mask, u[2], u[3])], 1)


def _mask(x: torch.Tensor, bands: torch.Tensor, mask_value: float) -> torch.Tensor:
    """x [B, T, F] with each row's time band bands[:, 0:2] and frequency band bands[:, 2:4] set to mask_value."""
    bounds = bands.to(x.device)
    index_t = torch.arange(x.shape[1], device=x.device)
    index_f = torch.arange(x.shape[2], device=x.device)
    time_band = (index_t >= bounds[:, 0:1]) & (index_t < bounds[:, 1:2])
    freq_band = (index_f >= bounds[:, 2:3]) & (index_f < bounds[:, 3:4])
    return x.masked_fill(time_band[:, :, None] | freq_band[:, None, :], mask_value)


def roll_time(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each sample of x [B, T, F] circularly in time by its own shift [B] frames (positive: later),
    as EfficientAT's and PANNs' roll augmentation does to the waveform."""
    frames = x.shape[1]
    source = (torch.arange(frames, device=x.device)[None, :] - shift.to(x.device).long()[:, None]) % frames
    return torch.gather(x, 1, source[:, :, None].expand(-1, -1, x.shape[2]))


def draw_shifts(batch_size: int, max_shift: int, generator: torch.Generator | None) -> torch.Tensor:
    """[B] circular time shifts, uniform in [−max_shift, max_shift] frames."""
    if max_shift < 0:
        raise ValueError(f"time_shift must be >= 0 frames, got {max_shift}")
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(-max_shift, max_shift + 1, (batch_size,), generator=generator, device=where).cpu()


def spec_augment(
    x: torch.Tensor,
    freq_mask: int,
    time_mask: int,
    generator: torch.Generator | None = None,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """One frequency and one time mask per sample of x [B, T, F] (torchaudio FrequencyMasking /
    TimeMasking semantics: width uniform in [0, max width), widths clamped to the axis length).

    Masked cells get `mask_value`, by default 0: on normalised input that is the dataset mean. AST
    masks the raw fbank with 0 before normalising; to reproduce that pass mask_value=−mean/(d·std).
    """
    if x.dim() != 3:
        raise ValueError(f"spec_augment: expected x of shape [batch, frames, bins], got {tuple(x.shape)}")
    return _mask(x, _draw_bands(*x.shape, freq_mask, time_mask, generator), mask_value)


def mixup_pairs(
    batch_size: int, rate: float, alpha: float = 10.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partner indices (a random permutation) and per-sample λ [B] on the CPU: each sample is mixed
    with probability `rate`, λ ~ Beta(α, α), else λ = 1 (left unchanged)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mixup rate must be in [0, 1], got {rate}")
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    where = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(batch_size, generator=generator, device=where).cpu()
    mixed = _uniform(batch_size, generator, torch.device("cpu")) < rate
    # torch has no Beta sampler that takes a generator: seed a numpy one from the torch stream.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=where).item())
    beta = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, batch_size)).float()
    lam = torch.where(mixed, beta, torch.ones(batch_size))
    return perm, lam


def _mix(
    a: torch.Tensor,
    b: torch.Tensor,
    lam: torch.Tensor,
    mode: str,
    valid_a: torch.Tensor | None,
    valid_b: torch.Tensor | None,
) -> torch.Tensor:
    """Mix a and b ([B, T, F]) with per-sample lam [B] in float32 or wider; λ = 1 returns a exactly.
    valid_a / valid_b [B]: valid frame counts (None: all frames valid); see the module docstring."""
    if mode not in MIX_MODES:
        raise ValueError(f"mixup mode {mode!r} is unknown; choose one of {', '.join(MIX_MODES)}")
    dtype = torch.promote_types(a.dtype, torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    lam = lam.to(device=a.device, dtype=dtype).view(-1, 1, 1)
    if mode == "logmel":
        mixed, alone = torch.where(lam == 1, a, lam * a + (1 - lam) * b), a
    else:
        mixed, alone = torch.logaddexp(a + lam.log(), b + torch.log1p(-lam)), a + lam.log()
    frames = torch.arange(a.shape[1], device=a.device)[None, :, None]
    if valid_b is not None:
        mixed = torch.where(frames < valid_b.to(a.device).view(-1, 1, 1), mixed, alone)
    if valid_a is not None:
        mixed = torch.where(frames < valid_a.to(a.device).view(-1, 1, 1), mixed, a)
    return mixed


def mix_features(
    x: torch.Tensor,
    perm: torch.Tensor,
    lam: torch.Tensor,
    mode: str = "power",
    valid_frames: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mix each raw log-mel x[i] ([B, T, F]) with x[perm[i]] by lam[i] (see module docstring);
    valid_frames [B] (optional) are the clips' valid frame counts, for padding-aware mixing."""
    perm = perm.to(x.device)
    valid_b = None if valid_frames is None else valid_frames.to(x.device)[perm]
    return _mix(x, x[perm], lam, mode, valid_frames, valid_b)


def mix_targets(y: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """λ·y + (1 − λ)·y[perm] (for multi-hot labels present in both: 1, as AST's label mix)."""
    lam = lam.to(device=y.device, dtype=torch.float32).view(-1, 1)
    y = y.float()
    return lam * y + (1 - lam) * y[perm.to(y.device)]


@dataclass(frozen=True)
class Recipe:
    """How each row of a batch is built from raw log-mel rows (CPU tensors, one entry per row): mixed with a
    partner row by λ (the row itself or λ = 1: unmixed), one time and one frequency mask band, then a
    circular time shift. Drawn on the CPU (`draw_batch`, `ViewTable.recipe`); `apply_recipe` does the
    arithmetic wherever the rows are (a DataLoader worker draws, the device applies)."""

    partner: torch.Tensor  # [B] int64: index of the partner among the source rows given to apply_recipe
    lam: torch.Tensor  # [B] float64 mixing weight of the row itself (1: unmixed)
    bands: torch.Tensor  # [B, 4] int64: time start, time end, frequency start, frequency end (start = end: none)
    shift: torch.Tensor  # [B] int64 circular time shift in frames, applied last

    def __len__(self) -> int:
        return len(self.lam)


def apply_recipe(source: torch.Tensor, recipe: Recipe, mode: str = "power", mask_value: float = 0.0,
                 valid_frames: torch.Tensor | None = None) -> torch.Tensor:
    """Rows 0..B−1 of `source` [N ≥ B, T, F] (raw log-mel of any float dtype, on any device) built by
    `recipe`: row i mixed with source[partner[i]] (only rows with λ < 1 are computed; λ = 1 leaves a row
    as it is), masked with `mask_value`, shifted. `valid_frames` [N] (optional) makes the mix padding-aware.
    Returns [B, T, F] in float32 or wider; each row depends only on its own inputs (any batching gives
    the same bits)."""
    if source.dim() != 3 or len(source) < len(recipe):
        raise ValueError(f"apply_recipe: source {tuple(source.shape)} must be [rows >= {len(recipe)}, frames, bins]")
    n = len(recipe)
    x = source[:n].to(torch.promote_types(source.dtype, torch.float32), copy=True)
    mixing = (recipe.lam < 1).nonzero().flatten()
    if len(mixing):
        own, other = mixing.to(source.device), recipe.partner[mixing].to(source.device)
        valid = None if valid_frames is None else valid_frames.to(source.device)
        x[own] = _mix(source[own], source[other], recipe.lam[mixing], mode,
                      None if valid is None else valid[own], None if valid is None else valid[other])
    x = _mask(x, recipe.bands, mask_value)
    return roll_time(x, recipe.shift) if recipe.shift.any() else x


@dataclass(frozen=True)
class BatchDraws:
    """A step's augmentation draws: the recipe of every row (partners within the batch) and the mixup
    pairs and λ that also mix the targets."""

    recipe: Recipe
    perm: torch.Tensor  # mixup partner of each row [B]
    lam: torch.Tensor  # mixup weight of each row [B] float32 (1: unmixed)


def draw_batch(batch: int, frames: int, bins: int, settings: dict[str, Any], generator: torch.Generator,
               keep: torch.Tensor | None = None) -> BatchDraws:
    """The draws of one step's mixup and SpecAugment (and time shift), in this order, from `generator`.

    `settings` is the config's `augment` section (mixup_rate, mixup_alpha, freq_mask, time_mask,
    time_shift); `keep` [B] bool marks rows left unmixed (λ = 1), e.g. rows a teacher view replaces."""
    perm, lam = mixup_pairs(batch, float(settings["mixup_rate"]), float(settings["mixup_alpha"]), generator)
    if keep is not None:
        lam = torch.where(keep, torch.ones_like(lam), lam)
    bands = _draw_bands(batch, frames, bins, int(settings["freq_mask"]), int(settings["time_mask"]), generator)
    max_shift = int(settings.get("time_shift", 0))
    shift = draw_shifts(batch, max_shift, generator) if max_shift > 0 else torch.zeros(batch, dtype=torch.long)
    return BatchDraws(Recipe(perm, lam.double(), bands, shift.long()), perm, lam)


@dataclass(frozen=True)
class AugmentedBatch:
    x: torch.Tensor  # raw log-mel after mixup and SpecAugment [B, T, F]
    y: torch.Tensor  # mixed targets [B, K] (float32)
    perm: torch.Tensor  # mixup partner of each row [B]
    lam: torch.Tensor  # mixup weight of each row [B] (1: unmixed)


def augment_batch(x: torch.Tensor, y: torch.Tensor, valid_frames: torch.Tensor | None, settings: dict[str, Any],
                  generator: torch.Generator, keep: torch.Tensor | None = None) -> AugmentedBatch:
    """Mixup, then SpecAugment, then the time shift of a raw log-mel batch x [B, T, F] with targets y [B, K]
    in one call: `draw_batch` (the draws, see there; `mask_value` in `settings` is the raw value of masked
    cells, default 0), then `apply_recipe`. The same generator state gives the same batch."""
    draws = draw_batch(len(x), x.shape[1], x.shape[2], settings, generator, keep)
    out = apply_recipe(x, draws.recipe, settings["mixup_mode"], float(settings.get("mask_value", 0.0)), valid_frames)
    return AugmentedBatch(out.float(), mix_targets(y, draws.perm, draws.lam), draws.perm, draws.lam)


def step_seeds(seed: int, epoch: int, step: int, rank: int) -> tuple[int, int]:
    """Two independent 63-bit seeds for one training step of one rank: (data augmentation, the model's
    own randomness such as dropout). A pure function of its arguments, so a resumed run redraws exactly
    what the interrupted one would have, on every rank, without saving any RNG state."""
    words = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(2, dtype=np.uint64)
    return int(words[0]) >> 1, int(words[1]) >> 1


@dataclass(frozen=True)
class ViewSpec:
    """How the cached teacher views of each clip are drawn."""

    n_views: int
    freq_mask: int
    time_mask: int
    mixup_rate: float
    alpha: float
    seed: int
    time_shift: int = 0  # widest circular time shift, in frames (0: none)
    mask_fill: str = "zero"  # masked cells: raw 0 (AST) or the store mean (MASK_FILLS)

    def __post_init__(self) -> None:
        mask_fill_value(self.mask_fill, 0.0)  # a clear error for an unknown fill
        if self.time_shift < 0:
            raise ValueError(f"view spec: time_shift must be >= 0, got {self.time_shift}")
        if self.n_views < 1:
            raise ValueError(f"view spec: n_views must be >= 1, got {self.n_views}")
        if self.freq_mask < 0 or self.time_mask < 0:
            raise ValueError(f"view spec: freq_mask and time_mask must be >= 0, got {self.freq_mask}, {self.time_mask}")
        if not 0.0 <= self.mixup_rate <= 1.0:
            raise ValueError(f"view spec: mixup_rate must be in [0, 1], got {self.mixup_rate}")
        if self.alpha <= 0:
            raise ValueError(f"view spec: alpha must be > 0, got {self.alpha}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViewSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        data = {"time_shift": 0, "mask_fill": "zero", **data}  # stores written before these options
        if set(data) != names:
            raise ValueError(
                f"view spec: fields {sorted(data)} do not match the expected {sorted(names)}"
            )
        return cls(**data)


@dataclass(frozen=True)
class ViewParams:
    """Everything needed to rebuild one view: mask bands, mixup partner (None: unmixed) and λ."""

    freq_start: int
    freq_width: int
    time_start: int
    time_width: int
    partner: str | None
    lam: float
    shift: int = 0  # circular time shift in frames, applied last


CLEAN_VIEW = ViewParams(0, 0, 0, 0, None, 1.0)


@dataclass(frozen=True)
class ViewTable:
    """The view parameters of n (clip, view) pairs as arrays: what the logits store keeps per clip and view,
    so a student reads them instead of redrawing them (`view_params`). Partners are feature-store rows."""

    bands: np.ndarray  # [n, 5] int32: time start, time width, frequency start, frequency width, shift
    partner: np.ndarray  # [n] int64 partner row (−1: unmixed)
    lam: np.ndarray  # [n] float64 weight of the clip itself (1: unmixed)

    @classmethod
    def from_params(cls, params: Sequence[ViewParams], row_of: dict[str, int]) -> "ViewTable":
        """The table of `params`, partner clip ids turned into rows by `row_of`."""
        bands = np.array([[p.time_start, p.time_width, p.freq_start, p.freq_width, p.shift] for p in params],
                         dtype=np.int32).reshape(len(params), 5)
        partner = np.array([-1 if p.partner is None else row_of[p.partner] for p in params], dtype=np.int64)
        return cls(bands, partner, np.array([p.lam for p in params], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.lam)

    def select(self, index: np.ndarray | slice) -> "ViewTable":
        """The entries at `index`."""
        return ViewTable(self.bands[index], self.partner[index], self.lam[index])

    def recipe(self, partner_index: np.ndarray) -> Recipe:
        """The recipe of these views for rows whose partners sit at `partner_index` [n] of the source rows
        (a row's own index where it has none)."""
        b = self.bands.astype(np.int64)
        bands = np.stack([b[:, 0], b[:, 0] + b[:, 1], b[:, 2], b[:, 2] + b[:, 3]], axis=1)
        return Recipe(torch.from_numpy(np.asarray(partner_index, dtype=np.int64)), torch.from_numpy(self.lam.copy()),
                      torch.from_numpy(bands), torch.from_numpy(b[:, 4].copy()))


def _view_rng(seed: int, clip_id: str, view: int) -> np.random.Generator:
    key = f"cmkd-pipe/view/1\0{seed}\0{clip_id}\0{view}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


def _band(u_width: float, u_start: float, size: int, max_width: int) -> tuple[int, int]:
    """(start, width) of one mask band, by the same rule as `_mask_band`."""
    value = u_width * min(max_width, size)
    return int(u_start * (size - value)), int(value)


def _draw_partner(rng: np.random.Generator, clip_id: str, pool: Sequence[str]) -> str | None:
    """A uniform draw from `pool` other than `clip_id` (rejection, so no O(N) copy); None if none."""
    if len(pool) == 0 or (len(pool) == 1 and pool[0] == clip_id):
        return None
    for _ in range(100):
        candidate = pool[int(rng.integers(len(pool)))]
        if candidate != clip_id:
            return str(candidate)
    raise ValueError(f"view params: the partner pool of {clip_id!r} holds (almost) only that clip")


def view_params(
    spec: ViewSpec, clip_id: str, view: int, n_frames: int, n_bins: int, partner_pool: Sequence[str]
) -> ViewParams:
    """Parameters of view `view` of `clip_id`: a pure function of (spec.seed, clip_id, view) given
    the spec, the feature shape and `partner_pool` (the clip's split, in a fixed order, e.g.
    manifest order; the clip itself is never its own partner)."""
    if not 0 <= view < spec.n_views:
        raise ValueError(f"view {view} is out of range: the view spec has {spec.n_views} view(s)")
    if view == 0:
        return CLEAN_VIEW
    rng = _view_rng(spec.seed, clip_id, view)
    u = rng.random(5)  # fixed draw order: masks first, so the pool never shifts them
    time_start, time_width = _band(u[0], u[1], n_frames, spec.time_mask)
    freq_start, freq_width = _band(u[2], u[3], n_bins, spec.freq_mask)
    lam = float(rng.beta(spec.alpha, spec.alpha))
    partner = _draw_partner(rng, clip_id, partner_pool) if u[4] < spec.mixup_rate else None
    if partner is None:
        lam = 1.0
    shift = int(rng.integers(-spec.time_shift, spec.time_shift + 1)) if spec.time_shift > 0 else 0
    return ViewParams(freq_start, freq_width, time_start, time_width, partner, lam, shift)


def apply_views(
    x: torch.Tensor,
    partner_x: torch.Tensor | None,
    params: Sequence[ViewParams],
    mode: str = "power",
    mask_value: float = 0.0,
    valid_frames: Sequence[int] | None = None,
    partner_valid_frames: Sequence[int] | None = None,
) -> torch.Tensor:
    """Apply views to raw log-mel x [B, T, F]: mix with partner_x [B, T, F] (rows of unmixed views
    are ignored; None if no view mixes), then the masks, set to `mask_value`, then the time shifts. The default 0 is a raw
    zero, as AST masks before normalising; pass the normalisation mean to get 0 after normalising.
    valid_frames / partner_valid_frames [B] (optional) make the mix padding-aware."""
    if x.dim() != 3 or len(params) != x.shape[0]:
        raise ValueError(f"apply_views: x {tuple(x.shape)} must be [batch, frames, bins] with one view per row")
    n = len(params)
    if partner_x is None:
        if any(p.partner is not None for p in params):
            raise ValueError("apply_views: a view mixes with a partner but partner_x is None")
        partner_x = x
    elif partner_x.shape != x.shape:
        raise ValueError(f"apply_views: partner_x {tuple(partner_x.shape)} must match x {tuple(x.shape)}")
    rows = torch.arange(n)
    recipe = Recipe(torch.where(torch.tensor([p.partner is not None for p in params], dtype=torch.bool), rows + n, rows),
                    torch.tensor([p.lam for p in params], dtype=torch.float64),
                    torch.tensor([[p.time_start, p.time_start + p.time_width, p.freq_start, p.freq_start + p.freq_width]
                                  for p in params], dtype=torch.long).view(n, 4),
                    torch.tensor([p.shift for p in params], dtype=torch.long))
    valid = None
    if valid_frames is not None or partner_valid_frames is not None:
        frames = torch.full((n,), x.shape[1], dtype=torch.long)
        valid = torch.cat([frames if valid_frames is None else torch.as_tensor(valid_frames).long(),
                           frames if partner_valid_frames is None else torch.as_tensor(partner_valid_frames).long()])
    dtype = torch.promote_types(x.dtype, partner_x.dtype)
    return apply_recipe(torch.cat([x.to(dtype), partner_x.to(dtype)]), recipe, mode, mask_value, valid)


def apply_view(
    x: torch.Tensor,
    partner_x: torch.Tensor | None,
    params: ViewParams,
    mode: str = "power",
    mask_value: float = 0.0,
    valid_frames: int | None = None,
    partner_valid_frames: int | None = None,
) -> torch.Tensor:
    """Single-clip `apply_views`: x and partner_x are [T, F] raw log-mel."""
    if x.dim() != 2:
        raise ValueError(f"apply_view: expected x of shape [frames, bins], got {tuple(x.shape)}")
    return apply_views(
        x[None],
        None if partner_x is None else partner_x[None],
        [params],
        mode,
        mask_value,
        None if valid_frames is None else [valid_frames],
        None if partner_valid_frames is None else [partner_valid_frames],
    )[0]
