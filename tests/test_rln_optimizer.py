"""RLNOptimizer's own behaviour: construction and its coefficients, non-finite weights,
stacked copies (batch_dims) and weights near the largest float. What both wrappers share is
in the files of each concern (test_schedulers, test_state_dict, ...); RLN's math against its
reference is in test_rln_reference.py, its update paths in test_rln_paths.py."""

import math

import pytest
import torch
from helpers import PATHS, make_model

from torch_rln import RLNOptimizer


# ---------------------------------------------------------------- construction
def test_params_none_regularizes_every_matrix():
    model = make_model()
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    assert opt.regularized_params() == [model[0].weight, model[2].weight]
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.optimizer.param_groups
    assert opt.defaults is opt.optimizer.defaults


def test_lambdas_start_at_avg_reg_and_name_unregularized_tensors():
    model = make_model()
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [model[0].weight], avg_reg=-9.0)
    lam = opt.lambdas(model[0].weight)
    assert lam.shape == model[0].weight.shape
    assert torch.all(lam == -9.0)
    with pytest.raises(ValueError, match=r"does not regularize this tensor \(shape \(16,\)"):
        opt.lambdas(model[0].bias)


def test_group_settings_override_defaults():
    model = make_model()
    opt = RLNOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        [{"params": [model[0].weight], "norm": 2, "avg_reg": -3.0}, {"params": model[2].weight}],
        reg_lr=1e3,
    )
    assert [(g["norm"], g["avg_reg"], g["reg_lr"]) for g in opt.reg_groups] == [(2, -3.0, 1e3), (1, -7.5, 1e3)]


# ---------------------------------------------------------------- non-finite weights
def _run_vector(n, grads, path, theta=-4.0, nu=1e3):
    """RLN with SGD on a 1-D float64 weight of ``n`` elements fed ``grads``; returns the
    weight and the coefficients after each step."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(0.5 * torch.randn(60, dtype=torch.float64)[:n].clone())
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), [w], avg_reg=theta, reg_lr=nu, **PATHS[path])
    history = []
    for grad in grads:
        w.grad = grad.clone()
        opt.step()
        history.append((w.detach().clone(), opt.lambdas(w)))
    return history


def test_a_weight_non_finite_from_the_start_is_left_out(path):
    """A weight that is NaN from the first step is left out: the other weights train
    exactly as the same weights without it (the mean is over the finite ones), and its
    coefficient stays avg_reg."""
    g = torch.Generator().manual_seed(1)
    grads = [0.1 * torch.randn(60, generator=g, dtype=torch.float64) for _ in range(30)]
    bad = 7
    with_nan = [gr[:60].clone() for gr in grads]
    with_nan[0][bad] = math.nan
    keep = [i for i in range(60) if i != bad]
    torch.manual_seed(0)
    start = 0.5 * torch.randn(60, dtype=torch.float64)
    clean_history = []
    w = torch.nn.Parameter(start[keep].clone())
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), [w], avg_reg=-4.0, reg_lr=1e3, **PATHS[path])
    for gr in grads:
        w.grad = gr[keep].clone()
        opt.step()
        clean_history.append((w.detach().clone(), opt.lambdas(w)))
    for (w_nan, lam_nan), (w_clean, lam_clean) in zip(_run_vector(60, with_nan, path), clean_history, strict=False):
        assert torch.isnan(w_nan[bad])
        assert lam_nan[bad] == -4.0
        # Equal up to the order of the sums (the left-out weight adds an exact 0 at its place),
        # which the dynamics amplify from 1e-16 to ~1e-10 in 30 steps; counting the NaN weight's
        # coefficient in the mean would move every other one by ~(Theta - mean) / 60 ~ 1e-2.
        torch.testing.assert_close(w_nan[keep], w_clean, rtol=0, atol=1e-9)
        torch.testing.assert_close(lam_nan[keep], lam_clean, rtol=0, atol=1e-7)
    assert (w_clean == 0).sum() >= 3  # RLN was at work


def test_a_weight_turning_non_finite_freezes_its_coefficient_and_leaves_the_mean(path):
    """A weight the inner step makes NaN (or Inf) mid-run: its coefficient stops moving (it
    takes the value it would have with the weight at 0, then stays), its shrink is 0, and on
    that step the other coefficients are projected with the mean over the finite weights."""
    g = torch.Generator().manual_seed(2)
    grads = [0.1 * torch.randn(60, generator=g, dtype=torch.float64) for _ in range(12)]
    grads[5][3], grads[5][9] = math.nan, math.inf
    history = _run_vector(60, grads, path)
    frozen = history[5][1][[3, 9]]
    for w, lam in history[5:]:
        assert not torch.isfinite(w[3])
        assert not torch.isfinite(w[9])
        assert torch.equal(lam[[3, 9]], frozen)
        finite = torch.ones(60, dtype=torch.bool)
        finite[[3, 9]] = False
        assert torch.isfinite(w[finite]).all()
        assert torch.isfinite(lam).all()
    # Step 5 by hand: lam_pre = lam - nu (w' - w_prev) r_prev, projected over the finite weights.
    torch.manual_seed(0)
    w = torch.nn.Parameter(0.5 * torch.randn(60, dtype=torch.float64))
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), [w], avg_reg=-4.0, reg_lr=1e3, **PATHS[path])
    for gr in grads[:5]:
        w.grad = gr.clone()
        opt.step()
    lam_prev, r_prev, w_prev = opt.lambdas(w), opt.reg_state[w]["r_prev"].clone(), w.detach().clone()
    w.grad = grads[5].clone()
    opt.step()
    w_new = w_prev - 0.1 * grads[5]
    pre = lam_prev - 1e3 * (w_new - w_prev) * r_prev
    finite = torch.isfinite(w_new)
    expected = pre + (-4.0 - pre[finite].mean())
    lam = opt.lambdas(w)
    uncapped = finite & torch.isclose(lam, expected, rtol=0, atol=1e-9)
    assert uncapped.sum() > 30  # most finite coefficients are below their cap
    assert torch.equal(opt.reg_state[w]["r_prev"][~finite], torch.zeros(2, dtype=torch.float64))
    # The other coefficients are not pulled by the frozen ones: no runaway over many steps.
    long = _run_vector(60, grads + [0.1 * torch.randn(60, generator=g, dtype=torch.float64) for _ in range(100)], path)
    _, lam_end = long[-1]
    assert lam_end[finite].mean() <= -4.0 + 1e-9
    assert lam_end[finite].mean() > -40.0


def test_a_nan_weight_does_not_switch_rln_off_for_its_tensor():
    """SGD with momentum, one weight NaN from step 10 (the adversarial run of issue 14). Its
    coefficient stays frozen instead of following the projection up (0.1.0: 102 by step 100,
    pushing every other coefficient down), and the tensor zeroes about as many weights as the
    same run without the NaN (here 525 and 527 of 600; 0.1.0: 502 and 527)."""

    def run(with_nan):
        torch.manual_seed(0)
        w = torch.nn.Parameter(0.3 * torch.randn(20, 30))
        opt = RLNOptimizer(torch.optim.SGD([w], lr=0.05, momentum=0.9), avg_reg=-4.0, reg_lr=1e3, compile=False)
        g = torch.Generator().manual_seed(1)
        for k in range(100):
            w.grad = 0.1 * torch.randn(20, 30, generator=g) + 0.02 * w.detach().nan_to_num()
            if with_nan and k == 10:
                w.grad[0, 0] = math.nan
            opt.step()
        return w.detach(), opt.lambdas(w)

    (w_nan, lam_nan), (w_clean, _) = run(True), run(False)
    assert torch.isnan(w_nan[0, 0])
    assert lam_nan[0, 0] < 0  # frozen near where it was, not climbing
    zeros_nan, zeros_clean = int((w_nan == 0).sum()), int((w_clean == 0).sum())
    assert zeros_clean >= 10
    assert abs(zeros_nan - zeros_clean) <= max(3, zeros_clean // 5)


# ---------------------------------------------------------------- stacked copies, large weights
def test_batch_dims_equals_separate_optimizers(path):
    """K copies stacked on a leading dim (batch_dims=1) train as K separate RLN optimizers."""
    k, steps = 4, 30
    g = torch.Generator().manual_seed(0)
    w0 = 0.3 * torch.randn(k, 8, 20, generator=g)
    grads = [0.1 * torch.randn(k, 8, 20, generator=g) for _ in range(steps)]
    settings = dict(norm=1, avg_reg=-4.0, reg_lr=1e3, **PATHS[path])
    stacked = torch.nn.Parameter(w0.clone())
    opt = RLNOptimizer(torch.optim.RMSprop([stacked], lr=1e-2), batch_dims=1, **settings)
    singles = [torch.nn.Parameter(w0[i].clone()) for i in range(k)]
    opts = [RLNOptimizer(torch.optim.RMSprop([w], lr=1e-2), **settings) for w in singles]
    for grad in grads:
        stacked.grad = grad.clone()
        opt.step()
        for i in range(k):
            singles[i].grad = grad[i].clone()
            opts[i].step()
    for i in range(k):
        torch.testing.assert_close(stacked[i], singles[i], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.lambdas(stacked)[i], opts[i].lambdas(singles[i]), rtol=1e-6, atol=1e-5)
    assert (stacked == 0).any()
    # One mean over the whole stack would differ: the copies' means are each avg_reg before the cap.
    per_copy = opt.lambdas(stacked).mean(dim=(1, 2))
    assert (per_copy <= -4.0 + 1e-5).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l2_with_weights_near_the_largest_float_stays_finite_and_leaves_the_others_alone(dtype, path):
    """norm=2 never forms 2 w (inf past half the largest float): a weight of 2e38 is shrunk
    by (2 e^lam) w like the others, and the ordinary weights of its tensor train as they
    would beside an ordinary weight (its fold, too large for float32, is dropped)."""
    results = []
    for big in (2e38, 2.0):
        w = torch.nn.Parameter(torch.tensor([[big, 0.5, -0.25, 1.0]], dtype=dtype))
        opt = RLNOptimizer(torch.optim.SGD([w], lr=1e-3), norm=2, avg_reg=-5.0, reg_lr=1.0, **PATHS[path])
        for _ in range(4):
            w.grad = torch.full_like(w, 0.1)
            opt.step()
        assert torch.isfinite(w).all()
        assert torch.isfinite(opt.lambdas(w)).all()
        results.append((w.detach().float(), opt.lambdas(w)))
    (w_big, lam_big), (w_small, _lam_small) = results
    assert 1e38 < w_big[0, 0] < 2e38  # shrunk, finite
    torch.testing.assert_close(w_big[0, 1:], w_small[0, 1:], rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=0)
    assert (lam_big[0, 1:] - (-5.0)).abs().max() < 0.05


@pytest.mark.parametrize("norm", [1, 2])
def test_a_weight_of_1e33_stays_finite_at_the_default_settings(norm, path):
    """The defaults (avg_reg -7.5, reg_lr 6e5): a float32 weight of 1e33 beside ordinary ones.
    Every weight and coefficient stays finite, and the big weight is shrunk, not grown."""
    w = torch.nn.Parameter(torch.tensor([[1e33, 0.5, -0.25, 1.0]]))
    opt = RLNOptimizer(torch.optim.SGD([w], lr=1e-3), norm=norm, **PATHS[path])
    for _ in range(3):
        w.grad = torch.full_like(w, 0.1)
        opt.step()
        assert torch.isfinite(w).all()
        assert torch.isfinite(opt.lambdas(w)).all()
    assert 0 < w[0, 0] <= 1e33


def test_reg_lr_zero_with_a_weight_whose_product_with_its_shrink_overflows_stays_finite(path):
    """reg_lr 0 (no gradient term) and L1: the coefficient of a weight near the largest float
    grows with the projection until w' r_prev overflows; the term it would scale is 0, not
    inf * 0 = NaN. Every weight and coefficient stays finite, each path agreeing with the
    per-tensor one (found by the property suite on bfloat16)."""
    results = {}
    for name in ("per_tensor", path):
        w = torch.nn.Parameter(torch.tensor([[3e38, 3e-4, -2e-4, 1e-4]]))
        opt = RLNOptimizer(torch.optim.SGD([w], lr=1e-3), norm=1, avg_reg=0.0, reg_lr=0.0, **PATHS[name])
        for _ in range(6):
            w.grad = torch.full_like(w, 1e-3)
            opt.step()
            assert torch.isfinite(w).all()
            assert torch.isfinite(opt.lambdas(w)).all()
        saved = opt.state_dict()["state"][0]
        assert all(torch.isfinite(v).all() for k, v in saved.items() if k.startswith("rln_"))
        results[name] = (w.detach().clone(), opt.lambdas(w))
    torch.testing.assert_close(results[path], results["per_tensor"], rtol=1e-5, atol=1e-6)
