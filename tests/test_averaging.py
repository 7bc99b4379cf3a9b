"""Weight averaging of state dicts and the checkpoint-ensemble accumulator."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cmkd_pipe.pipeline.training.averaging import EnsembleAccumulator, WeightAverage, average_state_dicts, load_state_dict_file


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(6, 2))
    model.train()
    for _ in range(seed + 1):  # a different num_batches_tracked per model
        model(torch.randn(2, 1, 8, 8))
    return model


def test_float_tensors_are_averaged_and_integer_buffers_come_from_the_last():
    states = [small_model(s).state_dict() for s in range(3)]
    averaged = average_state_dicts(states)
    assert set(averaged) == set(states[0])
    for key, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3)
        else:
            assert torch.equal(value, states[-1][key])
    assert averaged["1.num_batches_tracked"].item() == 3
    model = small_model(0)
    model.load_state_dict(averaged)  # strict: the result is a complete state dict


def test_half_precision_is_accumulated_in_fp32_and_cast_back():
    big = torch.full((4,), 60000.0, dtype=torch.float16)  # the fp16 sum of two would overflow to inf
    averaged = average_state_dicts([{"w": big}, {"w": big}])
    assert averaged["w"].dtype == torch.float16
    assert torch.equal(averaged["w"], big)


def test_paths_torch_and_safetensors(tmp_path):
    a, b = {"w": torch.ones(3), "n": torch.tensor(1)}, {"w": torch.full((3,), 3.0), "n": torch.tensor(7)}
    torch.save({"model": a, "epoch": 1}, tmp_path / "a.pt")
    torch.save({"model": b, "epoch": 2}, tmp_path / "b.pt")
    averaged = average_state_dicts([tmp_path / "a.pt", tmp_path / "b.pt"], key="model")
    assert torch.equal(averaged["w"], torch.full((3,), 2.0)) and averaged["n"].item() == 7

    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    averaged = average_state_dicts([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert torch.equal(averaged["w"], torch.full((3,), 2.0))


def test_load_errors_name_the_file(tmp_path):
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="c.pt.*not a state dict"):
        load_state_dict_file(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="no entry 'ema'"):
        load_state_dict_file(tmp_path / "c.pt", key="ema")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_mismatched_state_dicts_are_refused():
    with pytest.raises(ValueError, match="names differ"):
        average_state_dicts([{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    with pytest.raises(ValueError, match="state dict #1: a is"):
        average_state_dicts([{"a": torch.ones(1)}, {"a": torch.ones(2)}])
    with pytest.raises(ValueError, match="no state dicts"):
        average_state_dicts([])


def test_ensemble_is_the_running_mean():
    rng = np.random.default_rng(0)
    epochs = [rng.random((5, 3)) for _ in range(4)]
    ensemble = EnsembleAccumulator()
    for n, scores in enumerate(epochs, start=1):
        ensemble.add(torch.from_numpy(scores) if n % 2 else scores, clip_ids=list("abcde"))
        np.testing.assert_allclose(ensemble.mean(), np.mean(epochs[:n], axis=0), rtol=1e-6)
    assert ensemble.count == 4


def test_ensemble_refuses_a_different_clip_order_or_shape():
    ensemble = EnsembleAccumulator()
    ensemble.add(np.zeros((3, 2)), clip_ids=["a", "b", "c"])
    with pytest.raises(ValueError, match="clip order"):
        ensemble.add(np.zeros((3, 2)), clip_ids=["b", "a", "c"])
    with pytest.raises(ValueError, match="shape"):
        ensemble.add(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="nothing added"):
        EnsembleAccumulator().mean()


def test_ensemble_state_survives_a_weights_only_checkpoint(tmp_path):
    ensemble = EnsembleAccumulator()
    ensemble.add(np.ones((2, 2)), clip_ids=["x", "y"])
    torch.save({"ensemble": ensemble.state_dict()}, tmp_path / "ckpt.pt")
    restored = EnsembleAccumulator()
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["ensemble"])
    restored.add(np.zeros((2, 2)), clip_ids=["x", "y"])
    np.testing.assert_allclose(restored.mean(), np.full((2, 2), 0.5))


def test_running_weight_average_matches_the_file_average_and_survives_a_round_trip(tmp_path):
    torch.manual_seed(0)
    states = [{"w": torch.randn(3, 4), "h": torch.randn(2).half(), "n": torch.tensor(k)} for k in range(3)]
    running = WeightAverage()
    running.add(states[0])
    saved = tmp_path / "state.pt"
    torch.save({"wa": running.state_dict()}, saved)
    resumed = WeightAverage()
    resumed.load_state_dict(torch.load(saved, weights_only=True)["wa"])  # a resume state loads weights-only
    for state in states[1:]:
        resumed.add(state)
    expected = average_state_dicts(states)
    got = resumed.average()
    assert resumed.count == 3 and got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == states[0][name].dtype and torch.equal(got[name], expected[name]), name
    assert int(got["n"]) == 2  # integer buffers: the last state's
    with pytest.raises(ValueError, match="nothing added"):
        WeightAverage().average()
    with pytest.raises(ValueError, match="differ"):
        resumed.add({"other": torch.zeros(1)})
