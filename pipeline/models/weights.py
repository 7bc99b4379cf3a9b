"""Weight importers: offline state-dict surgery as pure functions, and `load_weights` that picks one.

Formats `load_weights` recognises (from a local file or folder; nothing here touches the network
except `load_imagenet_from_hub`, which the CLI calls only when the user asks for it):
  timm-vit      timm/DeiT ImageNet state dict for the AST: patch-embedding RGB weights summed to one
                channel (AST's rule), the square ImageNet position grid (14x14 or 24x24) adapted to
                the model's grid, ImageNet `head`/`head_dist` dropped.
  timm-cnn      timm ImageNet state dict of the CNN backbone: first conv summed to one channel,
                classifier dropped.
  ast-official  a YuanGongND/ast release (`module.v.*`, fused `attn.qkv`, `module.mlp_head.0/1.*`;
                `module.v.head*` ignored). The source grid is taken to have the model's frequency
                rows, so a checkpoint trained at another length is adapted in time.
  ast-hf        a Hugging Face ASTForAudioClassification folder (config.json + model.safetensors) or
                state dict: separate query/key/value fused into qkv, `classifier.*` -> head. A folder's
                config.json `layer_norm_eps` becomes the model's encoder and head LayerNorm eps (HF
                uses it for both; a bare state dict keeps ours: 1e-6 encoder, 1e-5 head, as the
                official AST).
  psla          a YuanGongND/psla EfficientNet checkpoint (`module.effnet.*` efficientnet_pytorch
                names): blocks are matched by order, layers by name, shapes checked. Use a
                `tf_efficientnet_b*` variant (same padding and BN eps as efficientnet_pytorch: features
                are identical when both input sides are multiples of 32, e.g. 128 x 1024 or 128 x 1056;
                efficientnet_pytorch fixes its padding for 224-pixel images, so 3000 frames differ). The
                attention head imports into `pooling: attention` with the same head count (its
                classification branch then yields logits instead of PSLA's sigmoid scores, so treat
                it as an initialisation); PSLA's mean-pooling head does not map: pass --new-head.
  native-ast, native-cnn  our own checkpoint or state dict of that family.
  native        our own checkpoint of any family: keys exactly the model's (a family's last resort).
Which formats fit a model is declared by its family (pipeline.models.registry, `weight_formats`);
converters and hub sources here are keyed by format, never by family.
Loading is strict: every missing, unexpected or mis-shaped key is reported in one error. Formats that
carry a classifier must match the model's class count unless `new_head=True` (CLI `--new-head`),
which starts a freshly initialised head; ImageNet formats always start a fresh head.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from cmkd_pipe.pipeline.models.ast import AST, IMAGENET_SOURCES, N_TOKENS
from cmkd_pipe.pipeline.models.cnn import CNNClassifier
from cmkd_pipe.pipeline.models.factory import build_model
from cmkd_pipe.pipeline.models.posembed import adapt_pos_embed
from cmkd_pipe.pipeline.models.registry import family_of_model
from cmkd_pipe.pipeline.models.weight_formats import detect_format

StateDict = dict[str, Tensor]
HEAD_PREFIX = "head."
_SHOWN = 10


class WeightsError(ValueError):
    """Weights that cannot be read, recognised or loaded into the model."""


# ---------------------------------------------------------------- generic helpers


def sum_rgb_conv(weight: Tensor) -> Tensor:
    """[O, 3, kh, kw] RGB conv weight -> [O, 1, kh, kw] by summing the input channels (AST's rule)."""
    if weight.dim() != 4 or weight.shape[1] not in (1, 3):
        raise WeightsError(f"first conv: expected weight [O, 3 or 1, kh, kw], got {tuple(weight.shape)}")
    return weight if weight.shape[1] == 1 else weight.sum(dim=1, keepdim=True)


def rename_keys(sd: StateDict, rules: list[tuple[str, str]], ignored: str | None = None) -> StateDict:
    """Apply the first matching (regex, replacement) rule to each key; drop keys matching `ignored`.
    Keys no rule matches are kept as they are (strict loading then reports them)."""
    out: StateDict = {}
    for key, value in sd.items():
        if ignored and re.match(ignored, key):
            continue
        for pattern, repl in rules:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key, count=1)
                break
        out[key] = value
    return out


def strip_prefix(sd: StateDict, prefix: str) -> StateDict:
    """Remove `prefix` from every key that has it (e.g. DataParallel's 'module.')."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


# ---------------------------------------------------------------- AST formats


def _vit_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    return [
        (rf"^{p}cls_token$", "embeddings.cls_token"),
        (rf"^{p}dist_token$", "embeddings.dist_token"),
        (rf"^{p}pos_embed$", "embeddings.pos_embed"),
        (rf"^{p}patch_embed\.proj\.", "embeddings.patch_embed.proj."),
        (rf"^{p}blocks\.", "blocks."),
        (rf"^{p}norm\.", "norm."),
    ]


OFFICIAL_RULES = _vit_rules("v.") + [(r"^mlp_head\.0\.", "head.norm."), (r"^mlp_head\.1\.", "head.fc.")]
OFFICIAL_IGNORED = r"^v\.head(_dist)?\."  # DeiT ImageNet heads the AST never uses
TIMM_VIT_RULES = _vit_rules("")
TIMM_VIT_IGNORED = r"^head(_dist)?\."

_LAYER = r"^(?:encoder\.layer|layers)\.(\d+)\."
HF_RULES = [
    (r"^embeddings\.cls_token$", "embeddings.cls_token"),
    (r"^embeddings\.distillation_token$", "embeddings.dist_token"),
    (r"^embeddings\.position_embeddings$", "embeddings.pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "embeddings.patch_embed.proj."),
    (_LAYER + r"attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (_LAYER + r"attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (_LAYER + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_LAYER + r"layernorm_after\.", r"blocks.\1.norm2."),
    (_LAYER + r"intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (_LAYER + r"output\.dense\.", r"blocks.\1.mlp.fc2."),
    (_LAYER + r"mlp\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.layernorm\.", "head.norm."),
    (r"^classifier\.dense\.", "head.fc."),
]  # hub files use encoder.layer.N.attention.attention.query; transformers>=5 modules use layers.N.q_proj
HF_QKV = re.compile(_LAYER + r"attention\.(?:attention\.(query|key|value)|([qkv])_proj)\.(weight|bias)$")


def official_ast_to_ours(sd: StateDict) -> StateDict:
    """YuanGongND/ast release keys (DataParallel `module.v.*`, `module.mlp_head.*`) -> ours."""
    return rename_keys(strip_prefix(sd, "module."), OFFICIAL_RULES, OFFICIAL_IGNORED)


def hf_ast_to_ours(sd: StateDict) -> StateDict:
    """Hugging Face AST keys -> ours, fusing the separate query/key/value projections into qkv."""
    sd = strip_prefix(sd, "audio_spectrogram_transformer.")
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    rest: StateDict = {}
    for key, value in sd.items():
        m = HF_QKV.match(key)
        if m:
            layer, long_name, short_name, kind = m.groups()
            parts.setdefault((layer, kind), {})[(long_name or short_name)[0]] = value
        else:
            rest[key] = value
    out = rename_keys(rest, HF_RULES)
    for (layer, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise WeightsError(f"Hugging Face AST layer {layer}: query/key/value {kind} incomplete ({sorted(qkv)})")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def timm_vit_to_ast(sd: StateDict, grid: tuple[int, int]) -> StateDict:
    """timm/DeiT distilled ImageNet ViT -> our AST: summed 1-channel patch embedding, square position
    grid adapted to `grid` (centre cut / bilinear), ImageNet heads dropped."""
    if "dist_token" not in sd:
        raise WeightsError("timm ViT weights: no dist_token; the AST starts from a *distilled* DeiT")
    out = rename_keys(sd, TIMM_VIT_RULES, TIMM_VIT_IGNORED)
    out["embeddings.patch_embed.proj.weight"] = sum_rgb_conv(out["embeddings.patch_embed.proj.weight"])
    n_patches = out["embeddings.pos_embed"].shape[1] - N_TOKENS
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise WeightsError(f"timm ViT weights: {n_patches} position slots do not form a square grid")
    out["embeddings.pos_embed"] = adapt_pos_embed(out["embeddings.pos_embed"], (side, side), grid, N_TOKENS)
    return out


def fit_pos_embed(sd: StateDict, grid: tuple[int, int], src_grid: tuple[int, int] | None = None) -> StateDict:
    """Adapt `embeddings.pos_embed` to `grid`. Without `src_grid` the source is taken to have the same
    number of frequency rows as `grid` (same n_mels and fstride), its time columns from its length."""
    pos = sd.get("embeddings.pos_embed")
    if pos is None or pos.shape[1] == N_TOKENS + grid[0] * grid[1]:
        return sd
    if src_grid is None:
        n_patches = pos.shape[1] - N_TOKENS
        if n_patches % grid[0]:
            raise WeightsError(
                f"position embedding with {n_patches} patches does not fit {grid[0]} frequency rows: "
                "build the model with the checkpoint's n_mels, fstride and tstride"
            )
        src_grid = (grid[0], n_patches // grid[0])
    return {**sd, "embeddings.pos_embed": adapt_pos_embed(pos, src_grid, grid, N_TOKENS)}


# ---------------------------------------------------------------- CNN formats

PSLA_TOP_RULES = [(r"^_conv_stem\.", "conv_stem."), (r"^_bn0\.", "bn1."), (r"^_conv_head\.", "conv_head."),
                  (r"^_bn1\.", "bn2.")]
PSLA_EXPAND_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                     "_bn2": "bn3"}  # efficientnet_pytorch MBConv -> timm InvertedResidual
PSLA_SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                        "_se_expand": "se.conv_expand", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}  # expand ratio 1 -> timm DepthwiseSeparableConv
_PSLA_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def _psla_plain(sd: StateDict) -> StateDict:
    return strip_prefix(strip_prefix(sd, "module."), "effnet.")


def psla_backbone_to_timm(sd: StateDict, block_prefixes: list[str]) -> StateDict:
    """efficientnet_pytorch backbone keys (PSLA `module.effnet.*`) -> timm EfficientNet keys under
    `backbone.`. The N-th `_blocks.N` maps onto the N-th timm block in `block_prefixes` (e.g.
    'blocks.1.0'); the ImageNet `_fc` is dropped; non-backbone keys are left out."""
    sd = {k: v for k, v in _psla_plain(sd).items() if k.startswith("_") and not k.startswith("_fc.")}
    blocks: dict[int, StateDict] = {}
    top: StateDict = {}
    for key, value in sd.items():
        m = _PSLA_BLOCK.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = value
        else:
            top[key] = value
    if sorted(blocks) != list(range(len(block_prefixes))):
        raise WeightsError(
            f"PSLA checkpoint has {len(blocks)} EfficientNet blocks, the model {len(block_prefixes)}: "
            "pick the variant (b0..b7) the checkpoint was trained with"
        )
    out = {f"backbone.{k}": v for k, v in rename_keys(top, PSLA_TOP_RULES).items()}
    for index, prefix in enumerate(block_prefixes):
        block = blocks[index]
        table = PSLA_EXPAND_BLOCK if any(k.startswith("_expand_conv.") for k in block) else PSLA_SEPARABLE_BLOCK
        for key, value in block.items():
            layer, param = key.split(".", 1)
            name = f"backbone.{prefix}.{table[layer]}.{param}" if layer in table else f"_blocks.{index}.{key}"
            out[name] = value
    return out


def psla_head_to_ours(sd: StateDict) -> StateDict:
    """PSLA attention head (`module.attention.*`, 1x1 convs per head) -> our AttentionPoolingHead keys;
    {} when the checkpoint has no attention head (PSLA mean pooling), which does not map."""
    sd = {k[len("attention."):]: v for k, v in strip_prefix(sd, "module.").items() if k.startswith("attention.")}
    if "att.0.weight" in sd:
        heads = sum(1 for k in sd if re.fullmatch(r"att\.\d+\.weight", k))
        names = [f"{{branch}}.{i}.{{param}}" for i in range(heads)]
        head_weight = sd["head_weight"]
    elif "att.weight" in sd:
        names, head_weight = ["{branch}.{param}"], torch.ones(1)
    else:
        return {}
    out = {"head.head_weight": head_weight}
    for branch in ("att", "cla"):
        for param in ("weight", "bias"):
            parts = [sd[n.format(branch=branch, param=param)] for n in names]
            out[f"head.{branch}.{param}"] = torch.cat([p.flatten(1) if p.dim() > 1 else p for p in parts])
    return out


def timm_cnn_to_ours(sd: StateDict, first_conv: str | tuple[str, ...], classifier: str | tuple[str, ...]) -> StateDict:
    """timm ImageNet CNN state dict -> our `backbone.*` keys: first conv(s) summed to one channel,
    classifier module(s) dropped (both names from the timm model's pretrained_cfg)."""
    sd = dict(sd)
    for conv in _names(first_conv):
        key = f"{conv}.weight"
        if key not in sd:
            raise WeightsError(f"timm CNN weights: no first conv {key!r} (first keys: {list(sd)[:5]})")
        sd[key] = sum_rgb_conv(sd[key])
    dropped = tuple(f"{c}." for c in _names(classifier))
    return {f"backbone.{k}": v for k, v in sd.items() if not k.startswith(dropped)}


def _names(names: str | tuple[str, ...]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


# ---------------------------------------------------------------- reading and loading


def read_weights(path: str | Path) -> tuple[StateDict, dict | None]:
    """(state dict, Hugging Face config or None) from a .pth/.pt/.bin/.safetensors file, one of our
    checkpoints, or a Hugging Face model folder (config.json + model.safetensors/pytorch_model.bin)."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        weights = [p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.exists()]
        if not config_file.exists() or not weights:
            raise WeightsError(f"{path}: not a Hugging Face model folder (needs config.json + model.safetensors)")
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise WeightsError(f"{config_file}: not valid JSON ({error}); download the model folder again") from None
        return _read_file(weights[0]), config
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    return _read_file(path), None


def _read_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{path}: cannot read as safetensors ({first}); the file may be truncated: "
                               "download it again") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise WeightsError(f"{path}: cannot read as a torch state dict ({exc})") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):  # our checkpoints; DeiT/timm training checkpoints
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor)")
    return obj


def load_weights(model: nn.Module, path: str | Path, new_head: bool = False) -> str:
    """Load weights from `path` into `model` strictly, in a format its family declares; returns the format."""
    sd, hf_config = read_weights(path)
    fmt = detect_format(sd)
    family = family_of_model(model)
    if fmt == "unknown" and set(strip_prefix(sd, "module.")) != set(model.state_dict()):
        sample = ", ".join(sorted(sd)[:3])
        raise WeightsError(f"{path}: unrecognised weight format (keys such as {sample}); give a timm, official "
                           "AST, Hugging Face AST, PSLA or cmkd-pipe file")
    _check_label_count(hf_config, sd, path)
    if fmt not in family.weight_formats:
        if set(strip_prefix(sd, "module.")) != set(model.state_dict()):
            raise WeightsError(f"{path}: {fmt} weights do not fit model family {family.display_name!r} "
                               f"(it imports {', '.join([*family.weight_formats, 'native'])})")
        fmt = "native"
    ours, has_head = _CONVERTERS.get(fmt, _native)(model, sd, hf_config, path)
    load_strict(model, ours, source=f"{path} ({fmt})", new_head=new_head or not has_head)
    return fmt


def _timm_vit(model: AST, sd: StateDict, hf_config: dict | None, path: Path) -> tuple[StateDict, bool]:
    return timm_vit_to_ast(sd, model.grid), False


# Patch grids of the official AST releases (128 mel bins x 1024 frames; audioset_{s}_{s}_*.pth), by their number
# of patches: the file has no config, so its grid is read off this table rather than guessed from the model's.
PUBLISHED_AST_GRIDS = {1212: (12, 101), 850: (10, 85), 648: (9, 72), 504: (8, 63)}  # strides 10, 12, 14, 16


def _ast_official(model: AST, sd: StateDict, hf_config: dict | None, path: Path) -> tuple[StateDict, bool]:
    ours = official_ast_to_ours(sd)
    n_patches = ours["embeddings.pos_embed"].shape[1] - N_TOKENS
    return fit_pos_embed(ours, model.grid, PUBLISHED_AST_GRIDS.get(n_patches)), True


def _check_label_count(config: dict | None, sd: StateDict, path: Path) -> None:
    """A Hugging Face config whose label count disagrees with its classifier's outputs is reported."""
    if not config or not config.get("id2label"):
        return
    heads = [v for k, v in sd.items() if k.endswith("classifier.dense.weight")]
    if heads and heads[0].shape[0] != len(config["id2label"]):
        raise WeightsError(f"{path}: config.json names {len(config['id2label'])} labels but the classifier has "
                           f"{heads[0].shape[0]} outputs; the folder's files do not belong together")


def _ast_hf(model: AST, sd: StateDict, hf_config: dict | None, path: Path) -> tuple[StateDict, bool]:
    if hf_config is not None and "layer_norm_eps" in hf_config:
        eps = hf_config["layer_norm_eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise WeightsError(f"{path}: config.json layer_norm_eps must be a positive number, got {eps!r}")
        model.set_norm_eps(float(eps), float(eps))
    return fit_pos_embed(hf_ast_to_ours(sd), model.grid, _hf_grid(hf_config, model, path)), True


def _native_ast(model: AST, sd: StateDict, hf_config: dict | None, path: Path) -> tuple[StateDict, bool]:
    return fit_pos_embed(sd, model.grid), True


def _native(model: nn.Module, sd: StateDict, hf_config: dict | None, path: Path) -> tuple[StateDict, bool]:
    return strip_prefix(sd, "module."), True


def _hf_grid(config: dict | None, model: AST, path: Path) -> tuple[int, int] | None:
    """Source patch grid of a Hugging Face AST config, after checking it patches like `model`."""
    if config is None:
        return None
    ours = (model.config["patch"], model.config["fstride"], model.config["tstride"])
    theirs = (config.get("patch_size", 16), config.get("frequency_stride", 10), config.get("time_stride", 10))
    if ours != theirs:
        raise WeightsError(f"{path}: patch/fstride/tstride {theirs} differ from the model's {ours}")
    patch, fstride, tstride = theirs
    n_mels, n_frames = config.get("num_mel_bins", 128), config.get("max_length", 1024)  # HF defaults
    return (n_mels - patch) // fstride + 1, (n_frames - patch) // tstride + 1


def _timm_cnn(model: CNNClassifier, sd: StateDict, hf_config: dict | None, path: Path) -> tuple[StateDict, bool]:
    cfg = model.backbone.pretrained_cfg
    return timm_cnn_to_ours(sd, cfg["first_conv"], cfg["classifier"]), False


def _psla(model: CNNClassifier, sd: StateDict, hf_config: dict | None, path: Path) -> tuple[StateDict, bool]:
    if not model.backbone_name.startswith("tf_efficientnet_b"):
        raise WeightsError(
            f"PSLA weights need a tf_efficientnet_b* variant (TF 'same' padding, BN eps 1e-3), "
            f"the model uses {model.backbone_name!r}"
        )
    stages = model.backbone.blocks  # timm EfficientNet: stages of blocks, in forward order
    prefixes = [f"blocks.{s}.{i}" for s, stage in enumerate(stages) for i in range(len(stage))]
    ours = psla_backbone_to_timm(sd, prefixes)
    head = psla_head_to_ours(sd) if model.config["pooling"] == "attention" else {}
    return {**ours, **head}, True  # a head that does not map is missing: --new-head required


_CONVERTERS = {"timm-vit": _timm_vit, "ast-official": _ast_official, "ast-hf": _ast_hf, "native-ast": _native_ast,
               "timm-cnn": _timm_cnn, "psla": _psla, "native-cnn": _native}  # format -> (model, sd, hf, path)


def load_strict(model: nn.Module, sd: StateDict, *, source: str, new_head: bool = False, assign: bool = False) -> None:
    """Load `sd` (already in our key names) into `model`, or raise one WeightsError listing every
    missing, unexpected and mis-shaped key. With `new_head` the head is left out of the check and
    re-initialised; otherwise a head of another shape asks for --new-head. `assign` makes the model
    take sd's tensors instead of copying into its own (a model built on the meta device)."""
    own = model.state_dict()
    head = {k for k in own if k.startswith(HEAD_PREFIX)}
    if new_head:
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIX)}
    expected = set(own) - head if new_head else set(own)
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = [k for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if mismatched and set(mismatched) <= head and not missing and not unexpected:
        shapes = ", ".join(f"{k}: {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:3])
        raise WeightsError(f"{source}: the classification head does not fit this model ({shapes}); "
                           "pass --new-head to start a fresh head")
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                problems.append(f"{len(keys)} {label} {_short(keys)}")
        if mismatched:
            shapes = [f"{k}: {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
            problems.append(f"{len(mismatched)} shape mismatch {_short(shapes)}")
        hint = "; pass --new-head to start a fresh head" if missing and set(missing) <= head else ""
        raise WeightsError(f"{source}: weights do not fit the model: {'; '.join(problems)}{hint}")
    model.load_state_dict(sd, strict=not new_head, assign=assign)
    if new_head:
        model.reset_head()


def _short(items: list[str]) -> str:
    more = f", ... (+{len(items) - _SHOWN})" if len(items) > _SHOWN else ""
    return "[" + ", ".join(items[:_SHOWN]) + more + "]"


def adapt_ast_to_frames(model: AST, n_frames: int) -> AST:
    """A new AST for `n_frames`-frame input with `model`'s weights, positions adapted in time."""
    new = build_model(model.config, model.n_classes, model.n_mels, n_frames)
    load_strict(new, fit_pos_embed(model.state_dict(), new.grid, model.grid), source="adapt_ast_to_frames")
    return new.to(next(model.parameters()).device)


def load_imagenet_from_hub(model: nn.Module) -> str:
    """Download timm ImageNet weights for `model` (network!) and load them as the local importers do.
    The only function here that reaches the network; the CLI calls it for `--pretrained imagenet`."""
    family = family_of_model(model)
    if family.imagenet_format not in _HUB_SOURCES:
        raise WeightsError(f"load_imagenet_from_hub: the {family.display_name} family has no ImageNet weights")
    name = _HUB_SOURCES[family.imagenet_format](model)
    source = timm.create_model(name, pretrained=True)
    ours, _ = _CONVERTERS[family.imagenet_format](model, source.state_dict(), None, Path(f"timm hub {name}"))
    load_strict(model, ours, source=f"timm hub {name}", new_head=True)
    return name


def _deit_name(model: AST) -> str:
    size = model.config["size"]
    if size not in IMAGENET_SOURCES:
        raise WeightsError(f"AST size {size!r} has no ImageNet weights; use tiny224/small224/base224/base384")
    return IMAGENET_SOURCES[size][0]


def _timm_cnn_name(model: CNNClassifier) -> str:
    return model.backbone_name


_HUB_SOURCES = {"timm-vit": _deit_name, "timm-cnn": _timm_cnn_name}  # format -> timm model name for `model`
