"""Model shapes, the factory's config handling, pooling heads and our checkpoint file."""
import hashlib
import json

import pytest
import torch

from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.models import (
    build_model,
    check_compatible,
    count_parameters,
    default_model_config,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from cmkd_pipe.pipeline.models.cnn import AttentionPoolingHead
from cmkd_pipe.pipeline.models.factory import preferred_memory_format

TINY_AST = {"arch": "ast", "size": "custom", "embed_dim": 32, "depth": 1, "num_heads": 4}


# ---------------------------------------------------------------- AST


def test_ast_shapes_and_embedding():
    torch.manual_seed(0)
    model = build_model(TINY_AST, 7, 128, 128).eval()
    assert model.grid == (12, 12) and model.input_frames == 128 and model.n_mels == 128
    assert model.embeddings.pos_embed.shape == (1, 2 + 144, 32)
    x = torch.randn(2, 128, 128)
    logits, emb = model(x, return_embedding=True)
    assert logits.shape == (2, 7) and emb.shape == (2, 32)
    assert torch.allclose(model(x), logits)
    assert torch.allclose(model.head(emb), logits)


def test_ast_strides_set_the_grid():
    model = build_model({**TINY_AST, "fstride": 16, "tstride": 12}, 3, 64, 100)
    assert model.grid == ((64 - 16) // 16 + 1, (100 - 16) // 12 + 1) == (4, 8)
    assert model(torch.randn(1, 100, 64)).shape == (1, 3)


def test_ast_refuses_other_input_shapes():
    model = build_model(TINY_AST, 3, 128, 128)
    with pytest.raises(ValueError, match=r"expected fbank \[B, 128, 128\]"):
        model(torch.randn(1, 256, 128))


@pytest.mark.parametrize(
    "size,dims", [("tiny224", (192, 12, 3)), ("small224", (384, 12, 6)), ("base224", (768, 12, 12)),
                  ("base384", (768, 12, 12))]
)
def test_named_ast_sizes(size, dims):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model({"arch": "ast", "size": size}, 527, 128, 1024)
    cfg = model.config
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == dims
    assert len(model.blocks) == dims[1] and model.blocks[0].attn.num_heads == dims[2]
    if dims[0] == 768:
        # AST reports 88.132 M for base384 @ 1024 frames, which counts DeiT's two unused 1000-way heads
        unused_imagenet_heads = 2 * (768 * 1000 + 1000)
        assert round((count_parameters(model) + unused_imagenet_heads) / 1e6, 3) == 88.132


# ---------------------------------------------------------------- CNN


@pytest.mark.parametrize("pooling,heads", [("mean", 4), ("attention", 4), ("attention", 1)])
def test_efficientnet_shapes(pooling, heads):
    model = build_model({"arch": "cnn", "variant": "efficientnet_b0", "pooling": pooling, "heads": heads}, 5, 64, 64)
    model.eval()
    logits, emb = model(torch.randn(2, 64, 64), return_embedding=True)
    assert logits.shape == (2, 5) and emb.shape == (2, 1280)
    assert model(torch.randn(1, 96, 64)).shape == (1, 5)  # any number of frames
    with pytest.raises(ValueError, match=r"\[B, T, 64\]"):
        model(torch.randn(1, 64, 32))


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("mobilenetv3_small_100", 1024)])  # 1024: timm conv_head width
def test_timm_backbones(name, dim):
    model = build_model({"arch": f"timm:{name}"}, 3, 64, 64).eval()
    logits, emb = model(torch.randn(2, 64, 64), return_embedding=True)
    assert logits.shape == (2, 3) and emb.shape == (2, dim)
    assert model.config["arch"] == f"timm:{name}"


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = build_model({"arch": "timm:resnet18", "pooling": "attention"}, 3, 64, 64).eval()
    x = torch.randn(2, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x), ref, atol=1e-5)


def test_preferred_memory_format_is_channels_last_for_cnns_only():
    cnn = preferred_memory_format(build_model({"arch": "timm:test_efficientnet"}, 3, 64, 64))
    kernels = [p for p in cnn.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert not all(p.is_contiguous() for p in kernels)  # (1x1 and depthwise kernels are both)
    ast = build_model(TINY_AST, 3, 64, 64)
    patch = next(p for p in ast.parameters() if p.dim() == 4)
    assert preferred_memory_format(ast) is ast and patch.is_contiguous()


def test_attention_pooling_is_psla_form_with_linear_branch():
    torch.manual_seed(0)
    head = AttentionPoolingHead(in_dim=6, n_classes=3, heads=2, drop_rate=0.0)
    with torch.no_grad():
        head.head_weight.copy_(torch.tensor([0.7, 0.2]))
    fmap = torch.randn(2, 6, 4, 5)  # [B, C, F', T']
    seq = fmap.mean(dim=2).transpose(1, 2)  # frequency pooled, [B, T', C]
    expected = torch.zeros(2, 3)
    for h in range(2):
        rows = slice(3 * h, 3 * h + 3)
        att = torch.sigmoid(seq @ head.att.weight[rows].T + head.att.bias[rows]).clamp(1e-7, 1 - 1e-7)
        att = att / att.sum(dim=1, keepdim=True)
        cla = seq @ head.cla.weight[rows].T + head.cla.bias[rows]
        expected += head.head_weight[h] * (att * cla).sum(dim=1)
    assert torch.allclose(head(fmap), expected, atol=1e-6)
    # a time-constant input pools to the classification branch itself (attention weights sum to 1)
    flat = fmap[..., :1].expand_as(fmap)
    cla = head.cla(flat.mean(dim=2)[..., 0]).view(2, 2, 3)
    assert torch.allclose(head(flat), (cla * head.head_weight.view(1, 2, 1)).sum(dim=1), atol=1e-6)
    assert torch.allclose(AttentionPoolingHead(6, 3, 4, 0.0).head_weight, torch.full((4,), 0.25))


# ---------------------------------------------------------------- factory


def test_defaults_and_round_trip():
    cnn = default_model_config("cnn")
    assert cnn == {"arch": "cnn", "variant": "efficientnet_b2", "pooling": "mean", "heads": 4, "drop_rate": 0.0,
                   "drop_path": 0.0}
    assert default_model_config("timm:resnet18")["arch"] == "timm:resnet18"
    assert default_model_config("ast")["size"] == "base384"
    model = build_model({"arch": "cnn", "variant": "efficientnet_b0", "drop_rate": 0}, 4, 64, 64)
    assert model.config == {**cnn, "variant": "efficientnet_b0"}
    assert isinstance(model.config["drop_rate"], float)
    assert json.loads(json.dumps(model.config)) == model.config
    again = build_model(model.config, 4, 64, 64)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    ast = build_model(TINY_AST, 4, 128, 128)
    assert build_model(ast.config, 4, 128, 128).config == ast.config


@pytest.mark.parametrize(
    "config,message",
    [
        ({"arch": "rnn"}, "unknown arch 'rnn'"),
        ({"arch": "timm:"}, "unknown arch"),
        ({"variant": "efficientnet_b0"}, "'arch' key"),
        ({"arch": "cnn", "colour": "red"}, r"unknown option\(s\) \['colour'\]"),
        ({"arch": "cnn", "variant": "efficientnet_b9"}, "unknown cnn variant"),
        ({"arch": "cnn", "pooling": "max"}, "unknown pooling 'max'"),
        ({"arch": "cnn", "heads": 0}, "'heads' .* must be >= 1"),
        ({"arch": "cnn", "heads": True}, "wrong type"),
        ({"arch": "cnn", "drop_rate": 1.5}, r"drop_rate must be in \[0, 1\)"),
        ({"arch": "ast", "size": "huge"}, "unknown size 'huge'"),
        ({"arch": "ast", "size": "custom", "embed_dim": 32}, "needs embed_dim, depth and num_heads"),
        ({"arch": "ast", "size": "custom", "embed_dim": 30, "depth": 1, "num_heads": 4}, "not divisible"),
        ({"arch": "ast", "size": "tiny224", "embed_dim": 64}, "use size 'custom'"),
        ({"arch": "ast", "fstride": 0}, "'fstride' .* must be >= 1"),
        ({"arch": "timm:no_such_net"}, "timm has no model 'no_such_net'"),
    ],
)
def test_bad_configs_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        build_model(config, 3, 64, 64)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="n_classes must be a positive int"):
        build_model(TINY_AST, 0, 128, 128)


def test_count_parameters():
    model = build_model(TINY_AST, 3, 128, 128)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    for p in model.blocks.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - sum(p.numel() for p in model.blocks.parameters())


# ---------------------------------------------------------------- checkpoints

VOCAB = [{"index": i, "id": f"/m/{i}", "name": f"label {i}"} for i in range(3)]
NORM = {"mean": -4.27, "std": 4.57, "divisor": 2.0}


def _features(**changes):
    return {**FeatureConfig(num_mel_bins=128, target_frames=128).to_dict(), **changes}


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY_AST, 3, 128, 128).eval()
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, feature_config=_features(), normalization=NORM,
                           vocabulary=VOCAB, extra={"epoch": 3})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    assert meta["format"] == "cmkd-pipe/checkpoint/1"
    assert meta["model_config"] == model.config
    assert (meta["n_classes"], meta["n_mels"], meta["n_frames"]) == (3, 128, 128)
    assert meta["vocabulary"] == VOCAB and meta["normalization"] == NORM and meta["extra"] == {"epoch": 3}
    assert meta["code_version"] and "state_dict" not in meta
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_of_a_cnn_through_a_wrapper(tmp_path):
    model = build_model({"arch": "cnn", "variant": "efficientnet_b0", "pooling": "attention"}, 3, 128, 128)
    wrapped = torch.nn.DataParallel(model)
    path = save_checkpoint(tmp_path / "cnn.pt", wrapped, feature_config=_features(), normalization=NORM,
                           vocabulary=VOCAB)
    loaded, meta = load_checkpoint(path)
    assert meta["model_config"]["pooling"] == "attention"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_loading_builds_on_the_meta_device_without_a_random_initialisation(tmp_path):
    model = build_model(TINY_AST, 3, 128, 128)
    path = save_checkpoint(tmp_path / "ast.pt", model, feature_config=_features(), normalization=NORM,
                           vocabulary=VOCAB)
    before = torch.random.get_rng_state()
    loaded, _ = load_checkpoint(path)
    assert torch.equal(torch.random.get_rng_state(), before)  # nothing drew initial weights
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad and p.device.type == "cpu"
               for p in loaded.parameters())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_loading_a_model_with_state_outside_its_checkpoint(tmp_path):
    """timm's blur pool keeps its filter in a non-persistent buffer: the model is built for real."""
    model = build_model({"arch": "timm:resnetblur18"}, 3, 128, 128).eval()
    assert any(name.endswith("filt") for name, _ in model.named_buffers())
    path = save_checkpoint(tmp_path / "blur.pt", model, feature_config=_features(), normalization=NORM,
                           vocabulary=VOCAB)
    loaded, _ = load_checkpoint(path)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    x = torch.randn(1, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_loading_names_weights_that_do_not_fit(tmp_path):
    model = build_model(TINY_AST, 3, 128, 128)
    path = save_checkpoint(tmp_path / "ast.pt", model, feature_config=_features(), normalization=NORM,
                           vocabulary=VOCAB)
    data = torch.load(path, weights_only=True)
    del data["state_dict"]["norm.weight"]
    data["state_dict"]["head.fc.bias"] = torch.zeros(5)
    torch.save(data, path)
    with pytest.raises(ValueError, match=r"checkpoint .*ast.pt: weights do not fit the model: 1 missing "
                                         r"\[norm.weight\]; 1 shape mismatch \[head.fc.bias: \(5,\) vs model \(3,\)\]"):
        load_checkpoint(path)


def test_save_refuses_inconsistent_metadata(tmp_path):
    model = build_model(TINY_AST, 3, 128, 128)
    with pytest.raises(ValueError, match="vocabulary has 2 labels, the model 3"):
        save_checkpoint(tmp_path / "a.pt", model, feature_config=_features(), normalization=NORM, vocabulary=VOCAB[:2])
    with pytest.raises(ValueError, match="differs from the model input"):
        save_checkpoint(tmp_path / "a.pt", model, feature_config=_features(target_frames=256), normalization=NORM,
                        vocabulary=VOCAB)
    with pytest.raises(ValueError, match="unknown field"):
        save_checkpoint(tmp_path / "a.pt", model, feature_config=_features(hop=1), normalization=NORM, vocabulary=VOCAB)
    assert not list(tmp_path.iterdir())


def test_load_refuses_other_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a cmkd-pipe checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_text("hello")
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(tmp_path / "y.pt")
    with pytest.raises(ValueError, match="no such file"):
        load_checkpoint(tmp_path / "z.pt")


def test_check_compatible_names_what_differs(tmp_path):
    meta = {"feature_config": _features(), "vocabulary": VOCAB}
    check_compatible(meta, _features(), [dict(r) for r in VOCAB])
    with pytest.raises(ValueError, match=r"sample_rate: 16000 != 32000; dither: 0.0 != 1.0"):
        check_compatible(meta, _features(sample_rate=32000, dither=1.0), VOCAB)
    with pytest.raises(ValueError, match="checkpoint has 3 labels, the data 2"):
        check_compatible(meta, _features(), VOCAB[:2])
    other = [VOCAB[0], {"index": 1, "id": "/m/x", "name": "other"}, VOCAB[2]]
    with pytest.raises(ValueError, match=r"label 1 differs: checkpoint '/m/1' \(label 1\) vs data '/m/x' \(other\)"):
        check_compatible(meta, _features(), other)
