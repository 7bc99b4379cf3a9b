"""Checkpoint aggregation (PSLA/AST): weight averaging of epoch state dicts and checkpoint ensembles.

Weight averaging (WA) averages the floating-point tensors of several epochs' state dicts; integer
buffers (BatchNorm `num_batches_tracked`) are counters, not weights, so they are taken from the last
state dict. Training keeps it as a running sum (`WeightAverage`, saved in the resume state) instead of
one checkpoint file per averaged epoch. A checkpoint ensemble averages the per-epoch predictions instead.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

StateDict = Mapping[str, torch.Tensor]


def load_state_dict_file(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a torch file; `key` picks a sub-dict (e.g. 'model')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        data: Any = load_file(path)
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        if not isinstance(data, Mapping) or key not in data:
            raise ValueError(f"{path}: no entry {key!r} in the checkpoint")
        data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: not a state dict (name -> tensor); pass key= to pick one inside it")
    return dict(data)


def average_state_dicts(sources: Sequence[str | os.PathLike | StateDict], key: str | None = None
                        ) -> dict[str, torch.Tensor]:
    """Average state dicts given as paths or mappings (in order; the last one supplies integer buffers).

    Float tensors are summed in at least fp32 and cast back to their dtype; other tensors are copied
    from the last state dict. All state dicts must have the same names, shapes and dtypes.
    """
    if not sources:
        raise ValueError("average_state_dicts: no state dicts given")
    average = WeightAverage()
    for n, source in enumerate(sources):
        state = source if isinstance(source, Mapping) else load_state_dict_file(source, key)
        average.add(state, f"state dict #{n}" if isinstance(source, Mapping) else str(source))
    return average.average()


class WeightAverage:
    """Running weight average: float tensors summed on the CPU in at least fp32 (in the order added), other
    tensors from the last state dict added; `average()` = sum / count cast back to each tensor's dtype."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._reference: dict[str, torch.Tensor] = {}

    def add(self, state: StateDict, name: str | None = None) -> None:
        """Add one state dict (same names, shapes and dtypes as the first one)."""
        if self.count == 0:
            self._reference = {k: v.detach().to("cpu") for k, v in state.items()}
            self._dtypes = {k: v.dtype for k, v in state.items()}
        _check_compatible(self._reference, state, name or f"state dict #{self.count}")
        for k, v in state.items():
            if v.is_floating_point():
                acc = v.detach().to("cpu", torch.promote_types(v.dtype, torch.float32))
                self._sum[k] = acc.clone() if self.count == 0 else self._sum[k] + acc
            else:
                self._sum[k] = v.detach().to("cpu").clone()
        self.count += 1

    def average(self) -> dict[str, torch.Tensor]:
        if self.count == 0:
            raise ValueError("weight average: nothing added yet")
        return {k: (v / self.count).to(self._dtypes[k]) if self._dtypes[k].is_floating_point else v.clone()
                for k, v in self._sum.items()}

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain types only (a resume state loads with weights_only)."""
        return {"count": self.count, "sum": dict(self._sum),
                "dtypes": {k: str(d).removeprefix("torch.") for k, d in self._dtypes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self._sum = {k: v.clone() for k, v in state["sum"].items()}
        self._dtypes = {k: getattr(torch, d) for k, d in state["dtypes"].items()}
        self._reference = {k: v.to(self._dtypes[k]) for k, v in self._sum.items()}


def _check_compatible(reference: StateDict, state: StateDict, name: str) -> None:
    if set(state) != set(reference):
        diff = sorted(set(state) ^ set(reference))
        raise ValueError(f"{name}: parameter names differ from the first state dict: {diff[:5]}")
    for k, v in state.items():
        if v.shape != reference[k].shape or v.dtype != reference[k].dtype:
            raise ValueError(f"{name}: {k} is {tuple(v.shape)} {v.dtype}, the first state dict has "
                             f"{tuple(reference[k].shape)} {reference[k].dtype}")


class EnsembleAccumulator:
    """Running mean of per-epoch predictions [N, K] over a fixed clip order (checkpoint ensemble)."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._clip_ids: list[str] | None = None

    def add(self, scores: np.ndarray | torch.Tensor, clip_ids: Sequence[str] | None = None) -> None:
        """Add one checkpoint's probabilities; `clip_ids`, if given, must match the first call's order."""
        array = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
        if array.ndim != 2:
            raise ValueError(f"ensemble: scores must be [clips, classes], got shape {array.shape}")
        if self._sum is not None and array.shape != self._sum.shape:
            raise ValueError(f"ensemble: scores of shape {array.shape}, earlier ones {self._sum.shape}")
        if clip_ids is not None:
            ids = [str(c) for c in clip_ids]
            if len(ids) != len(array):
                raise ValueError(f"ensemble: {len(ids)} clip ids for {len(array)} rows of scores")
            if self._clip_ids is not None and ids != self._clip_ids:
                raise ValueError("ensemble: clip order differs from the earlier predictions; keep the "
                                 "evaluation order fixed (shuffle=False)")
            self._clip_ids = ids
        array = array.astype(np.float64)
        self._sum = array if self._sum is None else self._sum + array
        self.count += 1

    def mean(self) -> np.ndarray:
        """The ensemble prediction: mean of everything added so far (float32)."""
        if self._sum is None:
            raise ValueError("ensemble: nothing added yet")
        return (self._sum / self.count).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain types only, so a checkpoint holding it loads with weights_only=True."""
        total = None if self._sum is None else torch.from_numpy(self._sum.copy())
        return {"count": self.count, "sum": total, "clip_ids": self._clip_ids}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self._sum = None if state["sum"] is None else torch.as_tensor(state["sum"]).double().numpy().copy()
        self._clip_ids = None if state["clip_ids"] is None else list(state["clip_ids"])
