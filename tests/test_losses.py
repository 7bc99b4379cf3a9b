import math

import pytest
import torch

from cmkd_pipe.pipeline.losses import CMKDLoss, kd_loss, task_loss, teacher_probs

ZS = torch.tensor([[1.0, -0.5, 0.2], [0.3, 2.0, -1.0]])
ZT = torch.tensor([[0.5, 0.1, -0.3], [-1.0, 1.5, 0.4]])
Y_MULTI = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
Y_SOFT = torch.tensor([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0]])


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def _expected_softmax_kl(zs, zt, tau):
    total = 0.0
    for s_row, t_row in zip(zs.tolist(), zt.tolist()):
        q, p = _softmax(s_row), _softmax([v / tau for v in t_row])
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total / len(zs)


def _expected_sigmoid_kl(zs, zt, tau):
    terms = []
    for s_row, t_row in zip(zs.tolist(), zt.tolist()):
        for s, t in zip(s_row, t_row):
            q, p = _sigmoid(s), _sigmoid(t / tau)
            terms.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    return sum(terms) / len(terms)


def _expected_bce(zs, p):
    terms = [
        -(pi * math.log(_sigmoid(s)) + (1 - pi) * math.log(1 - _sigmoid(s)))
        for s_row, p_row in zip(zs.tolist(), p.tolist())
        for s, pi in zip(s_row, p_row)
    ]
    return sum(terms) / len(terms)


def test_task_loss_single_label_soft_targets():
    expected = sum(
        -sum(y * math.log(q) for y, q in zip(y_row, _softmax(z_row)))
        for z_row, y_row in zip(ZS.tolist(), Y_SOFT.tolist())
    ) / 2
    assert task_loss(ZS, Y_SOFT, multilabel=False).item() == pytest.approx(expected, rel=1e-6)


def test_task_loss_multilabel():
    assert task_loss(ZS, Y_MULTI, multilabel=True).item() == pytest.approx(_expected_bce(ZS, Y_MULTI), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_kd_forms_match_formulas(tau):
    p_soft = teacher_probs(ZT, "softmax-kl", tau)
    p_sig = teacher_probs(ZT, "sigmoid-kl", tau)
    assert torch.equal(p_sig, teacher_probs(ZT, "bce", tau))
    assert kd_loss(ZS, p_soft, "softmax-kl").item() == pytest.approx(_expected_softmax_kl(ZS, ZT, tau), rel=1e-5)
    assert kd_loss(ZS, p_sig, "sigmoid-kl").item() == pytest.approx(_expected_sigmoid_kl(ZS, ZT, tau), rel=1e-5)
    assert kd_loss(ZS, p_sig, "bce").item() == pytest.approx(_expected_bce(ZS, p_sig), rel=1e-5)


def test_tau_applies_to_teacher_only():
    # Student logits equal to teacher logits / τ give zero KL: τ did not touch the student.
    p = teacher_probs(ZT * 3.0, "softmax-kl", tau=3.0)
    assert kd_loss(ZT, p, "softmax-kl").item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(ZT * 3.0, p, "softmax-kl").item() > 0.1


@pytest.mark.parametrize("form", ["softmax-kl", "sigmoid-kl"])
def test_identical_logits_give_zero_kl(form):
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)) * 5
    assert kd_loss(z, teacher_probs(z, form, 1.0), form).item() == pytest.approx(0.0, abs=1e-6)


def test_bce_form_is_teacher_entropy_at_agreement():
    p = teacher_probs(ZT, "bce", 1.0)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
    assert kd_loss(ZT, p, "bce").item() == pytest.approx(entropy.item(), rel=1e-5)
    assert kd_loss(ZT, p, "bce").item() > 0.1


def test_sigmoid_kl_and_bce_share_gradients():
    grads = []
    p = teacher_probs(ZT, "bce", 2.0)
    for form in ("sigmoid-kl", "bce"):
        z = ZS.clone().requires_grad_(True)
        kd_loss(z, p, form).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("multilabel,targets", [(True, Y_MULTI), (False, Y_SOFT)])
def test_cmkd_combination(multilabel, targets):
    loss = CMKDLoss(multilabel=multilabel, lam=0.3, tau=2.0)
    p = loss.teacher_probs(ZT)
    total, parts = loss(ZS, targets, p)
    task = task_loss(ZS, targets, multilabel)
    kd = _expected_softmax_kl(ZS, ZT, 2.0)
    assert parts["task"].item() == pytest.approx(task.item())
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert total.item() == pytest.approx(0.3 * task.item() + 0.7 * kd, rel=1e-5)


def test_lambda_one_and_no_teacher_equal_task_loss():
    task = task_loss(ZS, Y_MULTI, True).item()
    total, _ = CMKDLoss(multilabel=True, lam=1.0)(ZS, Y_MULTI, teacher_probs(ZT, "softmax-kl", 1.0))
    assert total.item() == pytest.approx(task)
    total, parts = CMKDLoss(multilabel=True, lam=0.0)(ZS, Y_MULTI)
    assert total.item() == pytest.approx(task) and set(parts) == {"task"}


def test_tau2_scaling():
    base = CMKDLoss(multilabel=True, lam=0.0, tau=3.0, form="sigmoid-kl")
    scaled = CMKDLoss(multilabel=True, lam=0.0, tau=3.0, form="sigmoid-kl", tau2_scaling=True)
    p = base.teacher_probs(ZT)
    assert scaled(ZS, Y_MULTI, p)[0].item() == pytest.approx(9.0 * base(ZS, Y_MULTI, p)[0].item(), rel=1e-6)


def test_mixed_teacher_probabilities():
    # Two teachers' probabilities mixed with a mixup λ form a valid target; KD against it matches the formula.
    lam = torch.tensor([[0.6], [0.2]])
    p = lam * teacher_probs(ZT, "softmax-kl", 1.0) + (1 - lam) * teacher_probs(ZT.flip(0), "softmax-kl", 1.0)
    expected = 0.0
    for s_row, p_row in zip(ZS.tolist(), p.tolist()):
        q = _softmax(s_row)
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p_row, q))
    assert kd_loss(ZS, p, "softmax-kl").item() == pytest.approx(expected / 2, rel=1e-5)


@pytest.mark.parametrize("form", ["softmax-kl", "sigmoid-kl", "bce"])
def test_extreme_logits_give_finite_values_and_gradients(form):
    z_s = torch.tensor([[200.0, -200.0, 0.0], [-150.0, 150.0, 80.0]], requires_grad=True)
    z_t = torch.tensor([[-300.0, 300.0, 0.0], [150.0, -150.0, -80.0]])
    for multilabel, targets in ((True, Y_MULTI), (False, Y_SOFT)):
        total, _ = CMKDLoss(multilabel=multilabel, form=form, tau=0.5)(z_s, targets, teacher_probs(z_t, form, 0.5))
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(z_s.grad).all()
        z_s.grad = None


@pytest.mark.parametrize(
    "kwargs,message",
    [({"form": "kl"}, "unknown"), ({"lam": 1.5}, r"\[0, 1\]"), ({"tau": 0.0}, "> 0")],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CMKDLoss(multilabel=True, **kwargs)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(ZS, torch.full((2, 4), 0.25), "softmax-kl")
