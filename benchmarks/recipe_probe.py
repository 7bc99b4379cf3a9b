"""Plain-loop recipe probes on the demo features (issue #9): VALIDATION accuracy only.

A deliberately minimal loop (no run folder, no resume, no KD) over the whole feature store held in
memory, with the project's models and normalisation, to compare recipe levers quickly on one core:
Adam, warm-up + cosine to 2 %, SpecAugment masks filled with the store mean (`mv` sets another
normalised fill), circular time shift (`shift`), optional mixup of the normalised input (`mix` = α). It
trains on folds other than `test` and `val` and scores fold `val` after every epoch; the test fold is
never read. The chosen recipe is then confirmed through the real pipeline (`cmkd-pipe train --preset
demo`, which is what `make demo` runs).

  PYTHONPATH=$PWD python benchmarks/recipe_probe.py STORE '{"model": "ast", "epochs": 100, "lr": 1e-3,
      "fm": 6, "tm": 20, "shift": 50, "ts": 12}' ...

Each argument is one probe (JSON); one JSON line per probe: spec, seconds, per-epoch (train loss, val
accuracy %), last and last-quarter mean.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmkd_pipe.pipeline.stores.feature_store import FeatureStore


def build(spec: dict[str, Any], n_classes: int, frames: int, bins: int) -> torch.nn.Module:
    if spec["model"] == "ast":
        from cmkd_pipe.pipeline.models.ast import AST
        return AST(n_classes, bins, frames, size="custom", embed_dim=spec.get("dim", 64), depth=spec.get("depth", 2),
                   num_heads=spec.get("heads", 4), patch=spec.get("patch", 16), fstride=spec.get("fs", 16),
                   tstride=spec.get("ts", 16))
    from cmkd_pipe.pipeline.models.cnn import CNNClassifier
    return CNNClassifier(spec.get("arch", "test_efficientnet"), n_classes, bins, frames, pooling=spec.get("pool", "mean"))


def probe(store: FeatureStore, spec: dict[str, Any]) -> dict[str, Any]:
    seed = spec.get("seed", 0)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy((store.read(np.arange(len(store)), np.float32) - store.mean) / (2 * store.std)).float()
    y = torch.from_numpy(store.targets.argmax(1)).long()
    val, test = spec.get("val", 2), spec.get("test", 1)
    train_rows = np.flatnonzero((store.folds != val) & (store.folds != test) & store.ok)
    val_rows = np.flatnonzero((store.folds == val) & store.ok)
    n_classes, (frames, bins) = store.n_classes, x.shape[1:]
    model = build(spec, n_classes, frames, bins)
    epochs, batch = spec["epochs"], spec.get("bs", 32)
    steps = epochs * math.ceil(len(train_rows) / batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec["lr"], betas=(spec.get("b1", 0.9), 0.999),
                                 weight_decay=spec.get("wd", 5e-7))
    warmup = spec.get("warmup", 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1, (s + 1) / warmup) * (
        0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    fill, fm, tm, shift, mix = spec.get("mv", 0.0), spec.get("fm", 12), spec.get("tm", 40), spec.get("shift", 0), \
        spec.get("mix", 0.0)
    started, history = time.time(), []
    for _ in range(epochs):
        model.train()
        order, total = rng.permutation(train_rows), 0.0
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            xb, yb = x[rows].clone(), F.one_hot(y[rows], n_classes).float()
            for j in range(len(rows)):
                if shift:
                    xb[j] = torch.roll(xb[j], int(rng.integers(-shift, shift + 1)), 0)
                if fm:
                    w = int(rng.integers(0, fm)); s0 = int(rng.integers(0, bins - w + 1)); xb[j, :, s0:s0 + w] = fill
                if tm:
                    w = int(rng.integers(0, tm)); s0 = int(rng.integers(0, frames - w + 1)); xb[j, s0:s0 + w] = fill
            if mix > 0:
                lam = torch.from_numpy(rng.beta(mix, mix, len(rows))).float()
                partner = torch.from_numpy(rng.permutation(len(rows)))
                xb = lam.view(-1, 1, 1) * xb + (1 - lam.view(-1, 1, 1)) * xb[partner]
                yb = lam.view(-1, 1) * yb + (1 - lam.view(-1, 1)) * yb[partner]
            loss = torch.sum(-yb * F.log_softmax(model(xb), 1), 1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        model.eval()
        with torch.no_grad():
            predicted = torch.cat([model(x[val_rows[i:i + 64]]) for i in range(0, len(val_rows), 64)]).argmax(1)
        history.append((round(total / len(train_rows), 3), round(float((predicted == y[val_rows]).float().mean()) * 100, 1)))
    quarter = [h[1] for h in history[-max(1, epochs // 4):]]
    return {"spec": spec, "seconds": round(time.time() - started), "history": history, "last": history[-1][1],
            "last_quarter": round(float(np.mean(quarter)), 1)}


def main() -> None:
    torch.set_num_threads(1)
    store = FeatureStore(sys.argv[1])
    for text in sys.argv[2:]:
        print(json.dumps(probe(store, json.loads(text))), flush=True)


if __name__ == "__main__":
    main()
