"""cmkd-pipe from Python (notebooks): the stages as functions and trained models as taggers.

    from cmkd_pipe import load_model
    model = load_model("runs/demo/main/train-cnn/final.pt")   # or an exported ONNX folder
    clip = model.tag("street.wav")                             # any length, any sample rate
    clip.top(5)                                                # [{id, name, score}, ...]
    clip.timeline(3)                                           # per window: {start_s, end_s, top}

Stage functions: `features`, `train`, `teacher_logits`, `train_student`, `report`, `tag`, `export`.
"""
from cmkd_pipe.api import (
    ClipTags,
    FeatureConfig,
    Tagger,
    export,
    features,
    load_model,
    report,
    tag,
    teacher_logits,
    train,
    train_student,
)

__all__ = ["ClipTags", "FeatureConfig", "Tagger", "export", "features", "load_model", "report", "tag", "teacher_logits", "train",
           "train_student"]
