"""Forward-pass timing of our AST against Hugging Face's ASTForAudioClassification, same weights.

    python -m benchmarks.ast_forward [--quick] [--shapes 128x1024] [--depth 4] [--batch 2] [--device cuda]

The default is a base-width model with 4 layers so that a CPU run takes seconds. Both models see the
same random fbank batch, alternated over rounds; the report gives seconds per batch for each, their paired
ratio and the largest logit difference. HF's model is built with timm's LayerNorm eps (1e-6, what the
AST was trained with; HF's default is 1e-12), so the difference measures the implementations only
(~1e-5; the heads' eps still differ).
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.paired import Results, add_arguments, alternate, finish_arguments, shape_name
from cmkd_pipe.pipeline.models.factory import build_model
from cmkd_pipe.pipeline.models.weights import hf_ast_to_ours, load_strict


def both_models(embed_dim: int, depth: int, num_heads: int, n_mels: int, n_frames: int, n_classes: int,
                seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, HF's) in eval mode with the same random weights."""
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
    return ours, hf


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--embed-dim", type=int, help="width (default 768, base; quick 64)")
    parser.add_argument("--depth", type=int, help="layers (default 4; quick 1)")
    parser.add_argument("--heads", type=int, help="attention heads (default 12; quick 4)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=527)
    args = parser.parse_args(argv)
    if args.shapes is None and not args.quick:
        args.shapes = "128x1024"
    args = finish_arguments(args)
    width, depth, heads = (args.embed_dim or (64 if args.quick else 768), args.depth or (1 if args.quick else 4),
                           args.heads or (4 if args.quick else 12))
    results = Results("ast_forward", args, models=())
    for shape in args.shape_list:
        mels, frames = shape
        ours, hf = (model.to(args.device) for model in both_models(width, depth, heads, mels, frames, args.classes))
        x = torch.randn(args.batch, frames, mels, device=args.device)

        def forward(model: torch.nn.Module) -> torch.Tensor:
            with torch.inference_mode():
                out = model(x)
                out = out if isinstance(out, torch.Tensor) else out.logits
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            return out.float()

        name = shape_name(shape)
        print(f"\nAST forward, batch {args.batch} x {name}, width {width}, {depth} layers, on {args.device}")
        times = alternate({"ours (timm Block)": lambda: forward(ours), "HF ASTForAudioClassification":
                           lambda: forward(hf)}, args.rounds)
        results.timings(f"seconds per batch of {args.batch}, {name}", times)
        results.ratio(f"ast_ours_vs_hf/{name}", f"our AST / HF AST forward, width {width}, {depth} layers, {name}",
                      times["ours (timm Block)"], times["HF ASTForAudioClassification"], headline=False)
        results.note(f"{name}: max |logit difference| {(forward(ours) - forward(hf)).abs().max().item():.2e}")
    return results.finish(args.json)


if __name__ == "__main__":
    main()
