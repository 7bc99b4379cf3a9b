"""Training presets: all load, share one schema, match the cited recipes, take overrides, fail clearly."""
import pytest
import torch
import yaml

from cmkd_pipe.pipeline.config import PUBLISHED_STATS, dump_config
from cmkd_pipe.pipeline.stores.codecs import DEFAULT_CODEC
from cmkd_pipe.pipeline.training.presets import (SECTIONS, list_presets, load_preset, resolve_config, select_family,
                                       validate_config)
from cmkd_pipe.pipeline.training.schedule import build_scheduler

PRESETS = ["audioset-balanced", "audioset-full", "cpu-small", "demo", "esc50", "fsd50k", "smoke"]


def dotted_keys(node, prefix=""):
    if not isinstance(node, dict):
        return {prefix}
    return set().union(*(dotted_keys(v, f"{prefix}{k}.") for k, v in node.items()))


def test_the_shipped_presets():
    assert list_presets() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("arch", ["cnn", "ast"])
def test_every_preset_has_the_demo_schema_and_builds_a_schedule(name, arch):
    config = select_family(load_preset(name), arch)
    assert tuple(config) == SECTIONS
    demo = select_family(load_preset("demo"), arch)
    not_model = lambda keys: {k for k in keys if not k.startswith("model.")}  # model options vary by arch
    assert not_model(dotted_keys(config)) == not_model(dotted_keys(demo))
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config["optim"]["lr"])
    build_scheduler(optimizer, steps_per_epoch=10, epochs=config["train"]["epochs"], **config["schedule"])
    assert isinstance(config["data"]["batch_size"], int)
    assert config["eval"]["metric"] in ("accuracy", "mAP")


def test_esc50_follows_the_ast_recipe():
    # YuanGongND/ast egs/esc50/run_esc.sh (lr 1e-4 without AudioSet pretraining, 1e-5 with it)
    config = select_family(load_preset("esc50"), "ast")
    assert config["optim"]["lr"] == 1e-4
    assert config["data"]["batch_size"] == 48 and config["train"]["epochs"] == 25
    assert config["schedule"] == {"kind": "step", "warmup_steps": 0, "decay_start_epoch": 5,
                                  "decay_every_epochs": 1, "decay_factor": 0.85, "min_lr_ratio": 0.0}
    assert (config["augment"]["freq_mask"], config["augment"]["time_mask"]) == (24, 96)
    assert config["augment"]["mixup_rate"] == 0.0
    assert config["features"] == {"target_frames": 512, "num_mel_bins": 128, "codec": DEFAULT_CODEC}
    assert config["norm"]["published_stats"] == "esc50" and config["norm"]["divisor"] == 2.0
    assert PUBLISHED_STATS["esc50"] == (-6.6268077, 5.358466)
    assert (config["model"]["ast"]["fstride"], config["model"]["ast"]["tstride"]) == (10, 10)
    assert config["optim"]["weight_decay"] == 5e-7 and config["optim"]["betas"] == [0.95, 0.999]
    assert config["eval"]["metric"] == "accuracy"
    assert (config["data"]["train"], config["data"]["test"]) == ("fold!=1", "fold==1")


def test_audioset_full_follows_ast_and_psla():
    preset = load_preset("audioset-full")
    ast, cnn = select_family(preset, "ast"), select_family(preset, "cnn")
    # YuanGongND/ast egs/audioset/run.sh (set=full)
    assert (ast["optim"]["lr"], ast["train"]["epochs"], ast["data"]["batch_size"]) == (1e-5, 5, 12)
    assert (ast["schedule"]["decay_start_epoch"], ast["schedule"]["decay_every_epochs"]) == (2, 1)
    assert (ast["average"]["wa_start_epoch"], ast["average"]["wa_end_epoch"]) == (1, 5)
    # YuanGongND/psla egs/audioset/run.sh (subset=full)
    assert (cnn["optim"]["lr"], cnn["train"]["epochs"], cnn["data"]["batch_size"]) == (1e-4, 30, 100)
    assert (cnn["schedule"]["decay_start_epoch"], cnn["schedule"]["decay_every_epochs"]) == (10, 5)
    assert (cnn["average"]["wa_start_epoch"], cnn["average"]["wa_end_epoch"]) == (16, 30)
    assert preset["data"]["balanced"] is True and preset["schedule"]["warmup_steps"] == 1000


def test_audioset_balanced_and_fsd50k_follow_their_recipes():
    balanced = load_preset("audioset-balanced")
    assert balanced["optim"]["lr"] == {"cnn": 1e-3, "ast": 5e-5}
    assert balanced["train"]["epochs"] == {"cnn": 60, "ast": 25}
    assert balanced["data"]["balanced"] is False
    fsd = select_family(load_preset("fsd50k"), "cnn")  # YuanGongND/psla egs/fsd50k/run.sh
    assert (fsd["optim"]["lr"], fsd["train"]["epochs"], fsd["data"]["batch_size"]) == (5e-4, 40, 24)
    assert (fsd["average"]["wa_start_epoch"], fsd["average"]["wa_end_epoch"]) == (21, 40)
    assert fsd["data"]["balanced"] is True and fsd["augment"]["mixup_rate"] == 0.5
    assert (fsd["data"]["val"], fsd["data"]["test"]) == ("val", "eval")


def test_demo_is_small():
    demo = load_preset("demo")
    assert demo["features"] == {"target_frames": 200, "num_mel_bins": 64, "codec": DEFAULT_CODEC}
    assert demo["train"]["epochs"] == {"cnn": 20, "ast": 100} and demo["data"]["batch_size"] == 32  # ~1 core-min each
    assert demo["augment"]["time_shift"] > 0 and demo["augment"]["mask_fill"] == "mean" and demo["kd"]["views"] >= 2
    assert (demo["data"]["val"], demo["data"]["test"]) == ("fold==2", "fold==1")  # never choose on the test fold
    assert demo["model"]["cnn"]["arch"] == "timm:test_efficientnet" and demo["model"]["cnn"]["pooling"] == "mean"
    assert (demo["model"]["ast"]["embed_dim"], demo["model"]["ast"]["depth"]) == (64, 2)
    assert demo["norm"]["source"] == "store"
    assert demo["model"]["cnn"]["pretrained"] is None and demo["model"]["ast"]["pretrained"] is None


def test_cpu_small_is_the_demo_recipe_without_its_splits():
    small, demo = load_preset("cpu-small"), load_preset("demo")
    assert {k: v for k, v in small.items() if k != "data"} == {k: v for k, v in demo.items() if k != "data"}
    assert (small["data"]["train"], small["data"]["val"], small["data"]["test"]) == ("train", "val", "eval")


def test_overrides_apply_per_arch_or_to_both():
    config = resolve_config("esc50", ["optim.lr.ast=1.0e-5", "data.train=fold!=2", "model.ast.pretrained=audioset"])
    assert config["optim"]["lr"] == {"cnn": 1e-3, "ast": 1e-5}
    assert config["data"]["train"] == "fold!=2" and config["model"]["ast"]["pretrained"] == "audioset"
    both = resolve_config("audioset-full", ["train.epochs=3", "average.wa_start_epoch=2", "average.wa_end_epoch=3"])
    assert select_family(both, "cnn")["train"]["epochs"] == select_family(both, "ast")["train"]["epochs"] == 3
    assert load_preset("esc50")["optim"]["lr"]["ast"] == 1e-4  # the preset itself is untouched


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key optim.lrr; known keys in optim: name, lr, weight_decay, betas, grad_clip$"),
    ("foo.bar=1", "unknown section foo"),
    ("data.num_workers=4", "unknown key data.num_workers; known keys in data: train, val, test, balanced"),
    ("model.cnn.varient=efficientnet_b0", "unknown key model.cnn.varient; known keys in model.cnn: arch, variant"),
    ("model.cnn.arch=ast", "model.cnn.arch = 'ast' is not a cnn architecture"),
    ("model.cnn.variant=efficientnet_b9", "model.cnn: model config: unknown cnn variant"),
    ("model.vit.arch=vit", "unknown key model.vit; known keys in model .*: cnn, ast"),
    ("optim.lr.vit=1", r"optim.lr has values for \['vit'\], which are not model families"),
    ("data.batch_size.ast.x=1", "data.batch_size.ast is a value, not a section"),
    ("optim.lr", "expected KEY=VALUE"),
    ("schedule.kind=cosne", "schedule.kind"),
    ("optim.lr.ast=fast", "optim.lr.ast = 'fast' has the wrong type, expected float; YAML reads 1e-5 as text"),
    ("train.amp=1", "train.amp = 1 has the wrong type, expected bool"),
    ("data.batch_size=0", "data.batch_size"),
    ("eval.metric=f1", "eval.metric"),
    ("norm.published_stats=imagenet", "norm.published_stats"),
    ("train.epochs=10", "wa_start_epoch"),  # fsd50k averages epochs 21-40
    ("schedule.decay_start_epoch=null", "decay_start_epoch"),
])
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ValueError, match=message):
        resolve_config("fsd50k", [override])


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'esc-50'.*esc50"):
        load_preset("esc-50")


def test_missing_fields_take_the_schema_defaults_and_families_are_checked():
    config = load_preset("demo")
    del config["kd"], config["optim"]["grad_clip"]
    completed = validate_config(config)
    assert completed["kd"] == {"lam": 0.5, "tau": 1.0, "form": "softmax-kl", "tau2_scaling": False, "views": 1}
    assert completed["optim"]["grad_clip"] is None and list(completed) == list(SECTIONS)
    with pytest.raises(ValueError, match="unknown model family 'vit'; registered: cnn, ast"):
        select_family(load_preset("demo"), "vit")
    with pytest.raises(ValueError, match="declares no model family"):
        validate_config({**load_preset("demo"), "model": {}})


def test_per_family_keys_are_accepted_in_overrides():
    config = resolve_config("esc50", ["model.cnn.arch=timm:resnet18", "model.ast.size=tiny224"])
    assert config["model"]["cnn"]["arch"] == "timm:resnet18"
    assert config["model"]["ast"]["size"] == "tiny224"
    assert select_family(config, "ast")["model"] == {"ast": config["model"]["ast"]}  # one family declared
    assert select_family(select_family(config, "ast"), "ast") == select_family(config, "ast")  # idempotent


def test_a_config_may_declare_any_subset_of_the_families():
    config = resolve_config("smoke", ["model={cnn: {variant: efficientnet_b0}}", "optim.lr=1.0e-3"])
    assert list(config["model"]) == ["cnn"]
    with pytest.raises(ValueError, match="model family 'ast' is not in the config's model section"):
        select_family(config, "ast")
    with pytest.raises(ValueError, match=r"optim.lr has no value for model family 'ast'; add one with "
                                         r"--set optim.lr.ast=VALUE"):
        resolve_config("demo", ["optim.lr={cnn: 1.0e-3}"])


def test_printed_config_round_trips():
    config = resolve_config("audioset-balanced", ["kd.tau=2.5"])
    assert yaml.safe_load(dump_config(config)) == config


def test_published_statistics_far_from_the_store_warn_once_with_both_numbers():
    """Measured on real drum recordings: store −10.4/4.8 against ESC-50's published −6.6/5.4."""
    from types import SimpleNamespace

    from cmkd_pipe.pipeline.config import PUBLISHED_STATS
    from cmkd_pipe.pipeline.training.setup import normalization, stats_mismatch

    message = stats_mismatch("esc50", PUBLISHED_STATS["esc50"], (-10.4, 4.8))
    assert message and "-10.40/4.80" in message and "-6.63/5.36" in message and "norm.source=store" in message
    assert stats_mismatch("esc50", PUBLISHED_STATS["esc50"], (-6.0, 5.0)) is None  # close enough
    assert stats_mismatch("esc50", (-6.6, 5.4), (-6.6, 3.0)) is not None  # same mean, std far off
    store = SimpleNamespace(mean=-10.4, std=4.8)
    with pytest.warns(UserWarning, match="differ from the published esc50"):
        norm = normalization({"source": "published", "published_stats": "esc50", "divisor": 2.0}, store)
    assert (norm.mean, norm.std) == PUBLISHED_STATS["esc50"]
