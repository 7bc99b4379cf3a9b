"""What `cmkd-pipe train-student --logits store.zarr` needs and the user did not type, read from provenance.

A logits store records its feature store and its teacher checkpoint; the teacher checkpoint records the
preset and overrides it was trained with (and its feature store). So the student gets the same feature
store, the same recipe, the recipe's first model family other than the teacher's (cross-model distillation
is the method) and a run folder beside the store, each overridable by its flag.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

@dataclass
class StudentDefaults:
    features: Path
    model: str
    preset: str
    overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    teacher_family: str = ""

    def describe(self) -> str:
        """One line that names every default, for the start of a run."""
        overrides = " ".join(self.overrides) or "none"
        return (f"student {self.model} ← {self.teacher_family} teacher; features {self.features}; "
                f"preset {self.preset} (overrides: {overrides}); out {self.out}")


def student_defaults(logits: Path | None, teacher: Path | None, features: Path | None = None,
                     preset: str | None = None) -> StudentDefaults:
    """Defaults from a logits store (cached teacher) or a teacher checkpoint (online teacher); `features` and
    `preset` where the user gave them (a given preset comes without the teacher's overrides)."""
    from cmkd_pipe.pipeline.models.checkpoint import read_checkpoint
    from cmkd_pipe.pipeline.models.registry import configured_families, family_names, family_of_arch
    from cmkd_pipe.pipeline.training.presets import resolve_config

    if logits is not None:
        attrs = _store_attrs(logits)
        checkpoint = Path(attrs["teacher"]["checkpoint"])
        features = features or Path(attrs["feature_store"])
        teacher_arch = attrs["teacher"].get("arch") or attrs["teacher"]["model_config"].get("arch", "")
        out_base = Path(logits)
    else:
        checkpoint = Path(teacher)
        teacher_arch, out_base = "", checkpoint.parent
    meta: dict[str, Any] = {}
    if checkpoint.is_file():
        meta = read_checkpoint(checkpoint)
        teacher_arch = teacher_arch or meta.get("extra", {}).get("arch") or meta["model_config"].get("arch", "")
    extra = meta.get("extra", {})
    features = features or (Path(extra["feature_store"]) if extra.get("feature_store") else None)
    if features is None:
        raise ValueError(f"{checkpoint}: the teacher checkpoint does not record its feature store; pass --features")
    teacher_family = family_of_arch(teacher_arch).name if teacher_arch else ""
    overrides = [] if preset else list(extra.get("overrides") or [])
    preset = preset or extra.get("preset")
    if not preset:
        raise ValueError(f"{checkpoint}: the teacher checkpoint does not record its training preset; pass --preset "
                         "(and --set for its overrides)")
    try:
        families = configured_families(resolve_config(preset, overrides))
    except ValueError:  # the recipe does not resolve here: the run itself reports why
        families = family_names()
    model = next((f for f in families if f != teacher_family), families[0])
    return StudentDefaults(features, model, preset, overrides,
                           out_base.with_name(f"student-{model}-from-{teacher_family or 'teacher'}"), teacher_family)


def _store_attrs(path: Path) -> dict[str, Any]:
    import zarr

    if not (Path(path) / "zarr.json").is_file():
        raise ValueError(f"{path}: not a logits store (no zarr.json); give the --out of `cmkd-pipe teacher-logits`")
    return dict(zarr.open_group(store=str(path), mode="r").attrs)
