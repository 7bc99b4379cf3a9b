"""Per-step LR schedules: AST/PSLA step decay, warm-up, cosine, resume."""
import math

import pytest
import torch

from cmkd_pipe.pipeline.training.schedule import LrSchedule, build_scheduler


def lrs_per_step(n_steps: int, base_lr: float = 1.0, **kwargs) -> list[float]:
    """The lr each optimizer step runs at, stepping the scheduler after every step as the engine does."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = build_scheduler(optimizer, **kwargs)
    seen = []
    for _ in range(n_steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_ast_esc50_recipe_values():
    # AST egs/esc50/run_esc.sh: no warm-up, lrscheduler_start 5, step 1, decay 0.85, 25 epochs
    steps = 10
    lrs = lrs_per_step(25 * steps, base_lr=1e-4, kind="step", warmup_steps=0, steps_per_epoch=steps,
                       epochs=25, decay_start_epoch=5, decay_every_epochs=1, decay_factor=0.85)
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[5 * steps - 1] == pytest.approx(1e-4)  # last step of epoch 5 (1-based)
    assert lrs[5 * steps] == pytest.approx(1e-4 * 0.85)  # first step of epoch 6
    assert lrs[7 * steps + 3] == pytest.approx(1e-4 * 0.85 ** 3)  # epoch 8
    assert lrs[-1] == pytest.approx(1e-4 * 0.85 ** 20)  # epoch 25


def test_step_decay_matches_torch_multisteplr_stepped_per_epoch():
    # oracle: AST/PSLA traintest.py, MultiStepLR(range(start, 1000, every)) stepped after each epoch
    start, every, factor, epochs, steps = 10, 5, 0.5, 40, 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    oracle = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(range(start, 1000, every)), gamma=factor)
    expected = []
    for _ in range(epochs):
        expected += [optimizer.param_groups[0]["lr"]] * steps
        optimizer.step()
        oracle.step()
    ours = lrs_per_step(epochs * steps, base_lr=5e-4, kind="step", warmup_steps=0, steps_per_epoch=steps,
                        epochs=epochs, decay_start_epoch=start, decay_every_epochs=every, decay_factor=factor)
    assert ours == pytest.approx(expected)


def test_ast_audioset_full_recipe_with_warmup():
    # AST egs/audioset/run.sh (full): lr 1e-5, warm-up 1000 steps, start 2, step 1, decay 0.5, 5 epochs
    schedule = LrSchedule(kind="step", steps_per_epoch=3000, epochs=5, warmup_steps=1000,
                          decay_start_epoch=2, decay_every_epochs=1, decay_factor=0.5)
    expected = {0: 1 / 1000, 499: 0.5, 999: 1.0, 2999: 1.0, 3000: 1.0, 5999: 1.0,
                6000: 0.5, 9000: 0.25, 12000: 0.125, 14999: 0.125}
    for step, factor in expected.items():
        assert schedule(step) == pytest.approx(factor), step


def test_min_lr_ratio_floors_step_decay():
    schedule = LrSchedule(kind="step", steps_per_epoch=1, epochs=20, warmup_steps=0,
                          decay_start_epoch=0, decay_every_epochs=1, decay_factor=0.5, min_lr_ratio=0.1)
    assert schedule(0) == pytest.approx(0.5)
    assert schedule(19) == pytest.approx(0.1)


def test_cosine_goes_from_one_to_the_min_ratio_after_warmup():
    schedule = LrSchedule(kind="cosine", steps_per_epoch=100, epochs=10, warmup_steps=100, min_lr_ratio=0.1)
    assert schedule(49) == pytest.approx(0.5)
    assert schedule(100) == pytest.approx(1.0)
    assert schedule(550) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(1000) == pytest.approx(0.1)


def test_constant_is_one_after_warmup():
    schedule = LrSchedule(kind="constant", steps_per_epoch=10, epochs=3, warmup_steps=4)
    assert [schedule(s) for s in (0, 3, 4, 29)] == pytest.approx([0.25, 1.0, 1.0, 1.0])


def test_scheduler_state_resumes_mid_epoch():
    kwargs = dict(kind="step", warmup_steps=5, steps_per_epoch=4, epochs=6, decay_start_epoch=2, decay_factor=0.5)
    full = lrs_per_step(24, base_lr=0.1, **kwargs)

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(optimizer, **kwargs)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(optimizer, **kwargs)
    optimizer.load_state_dict(saved_optimizer)
    scheduler.load_state_dict(saved_scheduler)
    resumed = []
    for _ in range(14):
        resumed.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert resumed == pytest.approx(full[10:])


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="linear"), "schedule.kind"),
    (dict(kind="step"), "decay_start_epoch"),
    (dict(kind="step", decay_start_epoch=1, decay_factor=0.0), "decay_factor"),
    (dict(kind="cosine", min_lr_ratio=2.0), "min_lr_ratio"),
    (dict(kind="constant", warmup_steps=-1), "warmup_steps"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LrSchedule(steps_per_epoch=10, epochs=2, **kwargs)
