"""Weight importers: official AST, Hugging Face AST, timm ImageNet, PSLA EfficientNet, strict loading."""
import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from cmkd_pipe.pipeline.models import WeightsError, build_model, load_imagenet_from_hub, load_weights
from cmkd_pipe.pipeline.models import weights as weights_module
from cmkd_pipe.pipeline.models.posembed import adapt_pos_embed
from cmkd_pipe.pipeline.models.weights import adapt_ast_to_frames, detect_format, sum_rgb_conv
from ast_oracle import hf_to_official

transformers = pytest.importorskip("transformers")

HF_SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
            "max_length": 128, "num_mel_bins": 64}
OURS_SMALL = {"arch": "ast", "size": "custom", "embed_dim": 64, "depth": 2, "num_heads": 4}
TINY_AST = {"arch": "ast", "size": "custom", "embed_dim": 32, "depth": 1, "num_heads": 4}


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (HF initialises tokens and positions to zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random ASTForAudioClassification saved with save_pretrained, and its logits on one input."""
    config = transformers.ASTConfig(**HF_SMALL, num_labels=5)
    model = transformers.ASTForAudioClassification(config).eval()
    _randomise(model)
    folder = tmp_path_factory.mktemp("hf_ast")
    model.save_pretrained(folder)
    x = torch.randn(3, 128, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x).logits
    return folder, x, logits, model


# ---------------------------------------------------------------- AST: official / Hugging Face


def test_official_checkpoint_matches_hugging_face(hf_folder, tmp_path):
    folder, x, hf_logits, _ = hf_folder
    official = hf_to_official(load_file(folder / "model.safetensors"))
    assert official["module.v.pos_embed"].shape == (1, 2 + 5 * 12, 64)
    torch.save(official, tmp_path / "audioset_10_10_0.0000.pth")
    model = build_model(OURS_SMALL, 5, 64, 128).eval()
    assert load_weights(model, tmp_path / "audioset_10_10_0.0000.pth") == "ast-official"
    with torch.no_grad():
        assert torch.allclose(model(x), hf_logits, atol=1e-4)


def test_official_checkpoint_adapts_to_another_length(hf_folder, tmp_path):
    folder, *_ = hf_folder
    official = hf_to_official(load_file(folder / "model.safetensors"))
    torch.save(official, tmp_path / "ast.pth")
    longer = build_model(OURS_SMALL, 5, 64, 256)
    load_weights(longer, tmp_path / "ast.pth")
    assert longer.grid == (5, 25)
    expected = adapt_pos_embed(official["module.v.pos_embed"], (5, 12), (5, 25))
    assert torch.equal(longer.embeddings.pos_embed.detach(), expected)
    assert longer(torch.randn(1, 256, 64)).shape == (1, 5)


def test_hugging_face_folder_and_state_dict(hf_folder, tmp_path):
    folder, x, hf_logits, hf_model = hf_folder
    model = build_model(OURS_SMALL, 5, 64, 128).eval()
    assert load_weights(model, folder) == "ast-hf"
    with torch.no_grad():
        assert torch.allclose(model(x), hf_logits, atol=1e-4)
    torch.save(hf_model.state_dict(), tmp_path / "hf_modules.pth")  # transformers>=5 module names
    again = build_model(OURS_SMALL, 5, 64, 128).eval()
    assert load_weights(again, tmp_path / "hf_modules.pth") == "ast-hf"
    with torch.no_grad():
        assert torch.allclose(again(x), hf_logits, atol=1e-4)


def test_hugging_face_stride_mismatch_is_refused(hf_folder):
    folder, *_ = hf_folder
    model = build_model({**OURS_SMALL, "tstride": 16}, 5, 64, 128)
    message = r"patch/fstride/tstride \(16, 10, 10\) differ from the model's \(16, 10, 16\)"
    with pytest.raises(WeightsError, match=message):
        load_weights(model, folder)


# ---------------------------------------------------------------- timm ImageNet


def _small_deit() -> torch.nn.Module:
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, embed_dim=32, depth=1, num_heads=4)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_deit_into_ast_sums_stem_and_cuts_grid(tmp_path, suffix):
    deit = _small_deit()
    sd = deit.state_dict()
    path = tmp_path / f"deit{suffix}"
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    model = build_model(TINY_AST, 3, 128, 128)  # 12x12 grid, from DeiT's 14x14
    assert load_weights(model, path) == "timm-vit"
    assert torch.allclose(model.embeddings.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    pos = model.embeddings.pos_embed.detach()
    assert torch.equal(pos[:, :2], sd["pos_embed"][:, :2])
    assert torch.equal(pos[0, 2:].reshape(12, 12, 32), sd["pos_embed"][0, 2:].reshape(14, 14, 32)[1:13, 1:13])
    assert torch.equal(model.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.embeddings.dist_token, sd["dist_token"])


def test_timm_deit_grid_grows_for_long_input(tmp_path):
    sd = _small_deit().state_dict()
    torch.save(sd, tmp_path / "deit.pth")
    model = build_model(TINY_AST, 3, 128, 512)  # 12x50 grid
    load_weights(model, tmp_path / "deit.pth")
    assert torch.equal(model.embeddings.pos_embed.detach(), adapt_pos_embed(sd["pos_embed"], (14, 14), (12, 50)))


def test_timm_cnn_imagenet_into_one_channel(tmp_path):
    source = timm.create_model("efficientnet_b0", pretrained=False)  # RGB, 1000 classes
    sd = source.state_dict()
    torch.save(sd, tmp_path / "effb0.pth")
    model = build_model({"arch": "cnn", "variant": "efficientnet_b0"}, 4, 64, 64)
    assert load_weights(model, tmp_path / "effb0.pth") == "timm-cnn"
    own = model.state_dict()
    assert torch.allclose(own["backbone.conv_stem.weight"], sd["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(own["backbone.blocks.3.1.conv_pw.weight"], sd["blocks.3.1.conv_pw.weight"])
    assert own["head.fc.weight"].shape == (4, 1280)
    assert not any(k.startswith("backbone.classifier") for k in own)


def test_sum_rgb_conv():
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(sum_rgb_conv(w), w[:, :1] + w[:, 1:2] + w[:, 2:])
    assert sum_rgb_conv(w[:, :1]) is not None
    with pytest.raises(WeightsError, match="first conv"):
        sum_rgb_conv(torch.randn(8, 4, 3, 3))


def test_imagenet_from_hub_path_without_network(monkeypatch):
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)  # stands in for the download
    created = []

    def fake_create(name, pretrained=False, **kwargs):
        created.append((name, pretrained))
        return deit

    monkeypatch.setattr(weights_module.timm, "create_model", fake_create)
    model = build_model({"arch": "ast", "size": "tiny224"}, 3, 128, 128)
    assert load_imagenet_from_hub(model) == "deit_tiny_distilled_patch16_224"
    assert created == [("deit_tiny_distilled_patch16_224", True)]
    assert torch.allclose(model.embeddings.patch_embed.proj.weight, deit.patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(model.blocks[11].mlp.fc2.weight, deit.blocks[11].mlp.fc2.weight)
    with pytest.raises(WeightsError, match="has no ImageNet weights"):
        load_imagenet_from_hub(build_model(TINY_AST, 3, 128, 128))


# ---------------------------------------------------------------- PSLA EfficientNet


def _psla_checkpoint(heads: int, n_classes: int):
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    effnet = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0", in_channels=1)
    effnet._fc = torch.nn.Identity()  # as PSLA does
    with torch.no_grad():
        for module in effnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    sd = {f"module.effnet.{k}": v for k, v in effnet.state_dict().items()}
    if heads == 1:
        for branch in ("att", "cla"):
            sd[f"module.attention.{branch}.weight"] = torch.randn(n_classes, 1280, 1, 1)
            sd[f"module.attention.{branch}.bias"] = torch.randn(n_classes)
    else:
        for i in range(heads):
            for branch in ("att", "cla"):
                sd[f"module.attention.{branch}.{i}.weight"] = torch.randn(n_classes, 1280, 1, 1)
                sd[f"module.attention.{branch}.{i}.bias"] = torch.randn(n_classes)
        sd["module.attention.head_weight"] = torch.rand(heads)
    return effnet.eval(), sd


def test_psla_backbone_gives_identical_features(tmp_path):
    effnet, sd = _psla_checkpoint(heads=4, n_classes=5)
    torch.save(sd, tmp_path / "as_mdl_0.pth")
    model = build_model({"arch": "cnn", "variant": "tf_efficientnet_b0", "pooling": "attention"}, 5, 64, 96).eval()
    assert load_weights(model, tmp_path / "as_mdl_0.pth") == "psla"
    x = torch.randn(2, 96, 64)  # sides multiple of 32: efficientnet_pytorch's static padding = TF 'same'
    with torch.no_grad():
        reference = effnet.extract_features(x.unsqueeze(1).transpose(2, 3))
        assert torch.allclose(model.features(x), reference, atol=1e-5)
    head = model.head
    assert torch.equal(head.att.weight[5:10], sd["module.attention.att.1.weight"].flatten(1))
    assert torch.equal(head.cla.bias[15:20], sd["module.attention.cla.3.bias"])
    assert torch.equal(head.head_weight, sd["module.attention.head_weight"])


def test_psla_single_head_maps_with_unit_weight(tmp_path):
    _, sd = _psla_checkpoint(heads=1, n_classes=3)
    torch.save(sd, tmp_path / "single.pth")
    model = build_model({"arch": "cnn", "variant": "tf_efficientnet_b0", "pooling": "attention", "heads": 1}, 3, 64, 64)
    load_weights(model, tmp_path / "single.pth")
    assert torch.equal(model.head.att.weight, sd["module.attention.att.weight"].flatten(1))
    assert torch.equal(model.head.head_weight, torch.ones(1))


def test_psla_head_rules(tmp_path):
    _, sd = _psla_checkpoint(heads=4, n_classes=5)
    torch.save(sd, tmp_path / "psla.pth")
    mean_model = build_model({"arch": "cnn", "variant": "tf_efficientnet_b0"}, 5, 64, 64)
    with pytest.raises(WeightsError, match="missing .*head.fc.weight.*pass --new-head"):
        load_weights(mean_model, tmp_path / "psla.pth")
    load_weights(mean_model, tmp_path / "psla.pth", new_head=True)
    assert torch.equal(mean_model.backbone.conv_stem.weight, sd["module.effnet._conv_stem.weight"])
    other_classes = build_model({"arch": "cnn", "variant": "tf_efficientnet_b0", "pooling": "attention"}, 7, 64, 64)
    with pytest.raises(WeightsError, match="classification head does not fit.*pass --new-head"):
        load_weights(other_classes, tmp_path / "psla.pth")
    with pytest.raises(WeightsError, match="need a tf_efficientnet_b\\* variant"):
        load_weights(build_model({"arch": "cnn", "variant": "efficientnet_b0"}, 5, 64, 64), tmp_path / "psla.pth")
    with pytest.raises(WeightsError, match="16 EfficientNet blocks, the model 23"):
        load_weights(build_model({"arch": "cnn", "variant": "tf_efficientnet_b2"}, 5, 64, 64), tmp_path / "psla.pth")


# ---------------------------------------------------------------- strict loading, heads, formats


def test_strict_errors_list_missing_and_unexpected_keys(tmp_path):
    source = build_model(TINY_AST, 3, 128, 128)
    sd = source.state_dict()
    del sd["blocks.0.norm1.weight"]
    sd.update({f"extra.{i:02d}": torch.zeros(1) for i in range(12)})
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as info:
        load_weights(build_model(TINY_AST, 3, 128, 128), tmp_path / "broken.pth")
    message = str(info.value)
    assert "1 missing [blocks.0.norm1.weight]" in message
    assert "12 unexpected [extra.00," in message and "extra.09, ... (+2)]" in message
    assert "\n" not in message


def test_shape_mismatch_outside_the_head_is_an_error(tmp_path):
    sd = build_model(TINY_AST, 3, 128, 128).state_dict()
    sd["norm.weight"] = torch.ones(5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"1 shape mismatch \[norm.weight: \(5,\) vs model \(32,\)\]"):
        load_weights(build_model(TINY_AST, 3, 128, 128), tmp_path / "bad.pth", new_head=True)


def test_new_head(tmp_path):
    source = build_model(TINY_AST, 7, 128, 128)
    torch.save(source.state_dict(), tmp_path / "seven.pth")
    model = build_model(TINY_AST, 5, 128, 128)
    with pytest.raises(WeightsError, match=r"head.fc.bias: \(7,\) vs model \(5,\).*pass --new-head"):
        load_weights(model, tmp_path / "seven.pth")
    assert load_weights(model, tmp_path / "seven.pth", new_head=True) == "native-ast"
    assert torch.equal(model.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)
    same = build_model(TINY_AST, 7, 128, 128)
    load_weights(same, tmp_path / "seven.pth")
    assert torch.equal(same.head.fc.weight, source.head.fc.weight)
    load_weights(same, tmp_path / "seven.pth", new_head=True)  # a fresh head even when it would fit
    assert not torch.equal(same.head.fc.weight, source.head.fc.weight)


def test_native_checkpoint_and_cross_family_refusal(tmp_path):
    cnn = build_model({"arch": "timm:resnet18"}, 3, 64, 64)
    torch.save({"format": "cmkd-pipe/checkpoint/1", "state_dict": cnn.state_dict()}, tmp_path / "ours.pt")
    assert load_weights(build_model({"arch": "timm:resnet18"}, 3, 64, 64), tmp_path / "ours.pt") == "native-cnn"
    with pytest.raises(WeightsError, match="native-cnn weights do not fit model family 'AST'"):
        load_weights(build_model(TINY_AST, 3, 128, 128), tmp_path / "ours.pt")


def test_unreadable_inputs(tmp_path):
    model = build_model(TINY_AST, 3, 128, 128)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(model, tmp_path / "missing.pth")
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(WeightsError, match="cannot read as a torch state dict"):
        load_weights(model, tmp_path / "notes.pth")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({}))
    with pytest.raises(WeightsError, match="not a Hugging Face model folder"):
        load_weights(model, tmp_path / "folder")


def test_detect_format_names():
    assert detect_format({"module.v.patch_embed.proj.weight": torch.zeros(1)}) == "ast-official"
    assert detect_format({"audio_spectrogram_transformer.layernorm.weight": torch.zeros(1)}) == "ast-hf"
    assert detect_format({"module.effnet._conv_stem.weight": torch.zeros(1)}) == "psla"
    assert detect_format({"patch_embed.proj.weight": torch.zeros(1), "pos_embed": torch.zeros(1)}) == "timm-vit"
    assert detect_format({"conv1.weight": torch.zeros(1)}) == "timm-cnn"


def test_adapt_ast_to_frames():
    torch.manual_seed(0)
    model = build_model(TINY_AST, 3, 128, 128).eval()
    longer = adapt_ast_to_frames(model, 300).eval()
    assert longer.input_frames == 300 and longer.grid == (12, 29)
    expected = adapt_pos_embed(model.embeddings.pos_embed.detach(), (12, 12), (12, 29))
    assert torch.equal(longer.embeddings.pos_embed.detach(), expected)
    assert torch.equal(longer.head.fc.weight, model.head.fc.weight)
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        assert torch.equal(adapt_ast_to_frames(model, 128).eval()(x), model(x))


# ---------------------------------------------------------------- import hardening (issue #10)


def test_an_official_10_10_checkpoint_is_read_with_its_published_grid(hf_folder, tmp_path):
    """1212 patches are the 12 x 101 grid of the 10/10 release at 128 bins x 1024 frames; a 64-bin model with
    4 frequency rows (which divides 1212) must not read them as 4 x 303."""
    folder, *_ = hf_folder
    official = hf_to_official(load_file(folder / "model.safetensors"))
    pos = torch.randn(1, 2 + 1212, 64, generator=torch.Generator().manual_seed(3))
    official["module.v.pos_embed"] = pos
    torch.save(official, tmp_path / "audioset_10_10_0.4593.pth")
    model = build_model({**OURS_SMALL, "fstride": 16, "tstride": 16}, 5, 64, 128)
    assert model.grid[0] == 4 and 1212 % 4 == 0
    load_weights(model, tmp_path / "audioset_10_10_0.4593.pth")
    assert torch.equal(model.embeddings.pos_embed.detach(), adapt_pos_embed(pos, (12, 101), model.grid))


def _copy_of(hf_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(hf_folder[0], copy)
    return copy


def test_a_truncated_safetensors_file_is_one_line_naming_it(hf_folder, tmp_path):
    broken = _copy_of(hf_folder, tmp_path)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors: cannot read as safetensors .*truncated"):
        load_weights(build_model(OURS_SMALL, 5, 64, 128), broken)


def test_a_malformed_config_json_is_one_line_naming_it(hf_folder, tmp_path):
    broken = _copy_of(hf_folder, tmp_path)
    (broken / "config.json").write_text('{"num_mel_bins": 64,')
    with pytest.raises(WeightsError, match=r"config\.json: not valid JSON"):
        load_weights(build_model(OURS_SMALL, 5, 64, 128), broken)


def test_a_config_whose_label_count_disagrees_with_the_head_is_reported(hf_folder, tmp_path):
    import json

    other = _copy_of(hf_folder, tmp_path)
    config = json.loads((other / "config.json").read_text())
    config["id2label"] = {str(i): f"c{i}" for i in range(7)}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="config.json names 7 labels but the classifier has 5 outputs"):
        load_weights(build_model(OURS_SMALL, 5, 64, 128), other)


def test_an_unknown_key_set_is_an_unrecognised_format(tmp_path):
    torch.save({"encoder.w": torch.zeros(3), "decoder.b": torch.zeros(2)}, tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match="unrecognised weight format \\(keys such as decoder.b, encoder.w\\)"):
        load_weights(build_model(OURS_SMALL, 5, 64, 128), tmp_path / "odd.pt")
