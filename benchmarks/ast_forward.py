"""Forward-pass timing of our AST against Hugging Face's ASTForAudioClassification, same weights.

Run from the repository root:  python -m benchmarks.ast_forward [--device cuda] [--depth 12]
The default is a base-width model with 4 layers so that a CPU run takes seconds. Both models see the
same random fbank batch; the report gives ms per batch for each and the largest logit difference.
HF's model is built with timm's LayerNorm eps (1e-6, what the AST was trained with; HF's default is
1e-12), so the difference measures the implementations only (~1e-5; the heads' eps still differ).
"""
from __future__ import annotations

import argparse
import time

import torch

from cmkd_pipe.pipeline.models.factory import build_model
from cmkd_pipe.pipeline.models.weights import hf_ast_to_ours, load_strict


def _time_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> tuple[float, torch.Tensor]:
    def run() -> torch.Tensor:
        out = model(x)
        return out if isinstance(out, torch.Tensor) else out.logits

    with torch.inference_mode():
        for _ in range(warmup):
            out = run()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        for _ in range(repeats):
            out = run()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) * 1000 / repeats, out.float()


def compare_ast_forward(device: str = "cpu", embed_dim: int = 768, depth: int = 4, num_heads: int = 12,
                        n_mels: int = 128, n_frames: int = 1024, batch: int = 2, n_classes: int = 527,
                        repeats: int = 3, warmup: int = 1, seed: int = 0) -> dict[str, float]:
    """Time both forwards on `device`; print and return ms/batch for each and the max logit difference."""
    from transformers import ASTConfig, ASTForAudioClassification  # test-only dependency

    torch.manual_seed(seed)
    config = ASTConfig(hidden_size=embed_dim, num_hidden_layers=depth, num_attention_heads=num_heads,
                       intermediate_size=4 * embed_dim, max_length=n_frames, num_mel_bins=n_mels, num_labels=n_classes,
                       layer_norm_eps=1e-6)
    hf = ASTForAudioClassification(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if not p.any():  # HF starts tokens and positions at zero; make them matter
                p.normal_(0, 0.02)
    ours = build_model({"arch": "ast", "size": "custom", "embed_dim": embed_dim, "depth": depth,
                        "num_heads": num_heads}, n_classes, n_mels, n_frames).eval()
    load_strict(ours, hf_ast_to_ours(hf.state_dict()), source="HF AST")
    hf, ours = hf.to(device), ours.to(device)
    x = torch.randn(batch, n_frames, n_mels, device=device)
    ours_ms, ours_logits = _time_ms(ours, x, repeats, warmup)
    hf_ms, hf_logits = _time_ms(hf, x, repeats, warmup)
    diff = (ours_logits - hf_logits).abs().max().item()
    print(f"AST forward, batch {batch} x {n_frames} frames x {n_mels} mels, width {embed_dim}, {depth} layers, "
          f"on {device}:")
    print(f"  ours (timm Block)          {ours_ms:9.1f} ms/batch")
    print(f"  HF ASTForAudioClassification {hf_ms:7.1f} ms/batch")
    print(f"  max |logit difference|     {diff:.2e}")
    return {"ours_ms": ours_ms, "hf_ms": hf_ms, "max_abs_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    compare_ast_forward(args.device, depth=args.depth, batch=args.batch, n_frames=args.frames, repeats=args.repeats)


if __name__ == "__main__":
    main()
