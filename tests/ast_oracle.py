"""Test oracle: a Hugging Face AST state dict rewritten as a YuanGongND/ast release, the reverse of HF's
conversion script, so a random HF model can stand in for an official checkpoint (and give its logits)."""
from __future__ import annotations

import torch


def hf_to_official(sd: dict) -> dict:
    """Test oracle: the reverse of HF's convert script (hub key names -> YuanGongND/ast release keys)."""
    renames = [
        ("classifier.layernorm", "module.mlp_head.0"), ("classifier.dense", "module.mlp_head.1"),
        ("audio_spectrogram_transformer.layernorm", "module.v.norm"),
        ("audio_spectrogram_transformer.", "module.v."),
        ("embeddings.cls_token", "cls_token"), ("embeddings.distillation_token", "dist_token"),
        ("embeddings.position_embeddings", "pos_embed"), ("embeddings.patch_embeddings.projection", "patch_embed.proj"),
        ("encoder.layer", "blocks"), ("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
        ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
    ]
    out, qkv = {}, {}
    for key, value in sd.items():
        for old, new in renames:
            key = key.replace(old, new)
        if ".attention.attention." in key:
            prefix, part, kind = key.rsplit(".", 2)
            qkv.setdefault(prefix.replace("attention.attention", "attn.qkv") + "." + kind, {})[part] = value
        else:
            out[key] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]])
    dim = sd["classifier.dense.weight"].shape[1]
    out["module.v.head.weight"], out["module.v.head.bias"] = torch.randn(1000, dim), torch.randn(1000)  # ignored
    out["module.v.head_dist.weight"], out["module.v.head_dist.bias"] = torch.randn(1000, dim), torch.randn(1000)
    return out
