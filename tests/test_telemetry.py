"""``RLNOptimizer.stats()`` and ``log_stats``, held to hand counts on constructed weights."""

import math

import pytest
import torch

from torch_rln import RLNOptimizer, log_stats


def constructed(batch_dims=0):
    """A weight (copies of) ``(4, 5)`` with known zeros, and an optimizer whose state holds
    known coefficients and shrinks (loaded from a state dict, so nothing is folded)."""
    w = torch.arange(1.0, 21.0).reshape(4, 5)
    w[:, 1] = 0.0  # input 1 eliminated
    w[:, 3] = 0.0  # input 3 eliminated
    w[2, 0] = 0.0  # a zero in a column that stays
    if batch_dims:
        other = torch.arange(1.0, 21.0).reshape(4, 5)
        other[:, 4] = 0.0  # copy 1: only input 4 eliminated
        w = torch.stack([w, other])
    weight = torch.nn.Parameter(w)
    opt = RLNOptimizer(torch.optim.SGD([weight], lr=0.1), batch_dims=batch_dims, avg_reg=-5.0, compile=False)
    lam = torch.linspace(-8.0, -2.0, weight.numel()).reshape(weight.shape)
    r_prev = torch.full_like(lam, 0.5)
    state = opt.state_dict()
    state["state"][0] = {"rln_lam": lam, "rln_r_prev": r_prev}
    opt.load_state_dict(state)
    return weight, opt, lam, r_prev


def test_stats_match_a_hand_count():
    weight, opt, lam, _ = constructed()
    stats = opt.stats()
    assert list(stats) == ["0"]  # unnamed: the index in state_dict()["state"]
    s = stats["0"]
    assert s.zero_fraction.item() == pytest.approx(9 / 20)  # 2 columns of 4, and one more
    assert s.eliminated.item() == 2
    assert s.eliminated_mask.tolist() == [False, True, False, True, False]
    values = lam.flatten().tolist()
    mean = sum(values) / 20
    assert s.coef_mean.item() == pytest.approx(mean)
    assert s.coef_std.item() == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 20))
    assert (s.coef_min.item(), s.coef_max.item()) == (pytest.approx(-8.0), pytest.approx(-2.0))
    assert s.shrink_norm.item() == pytest.approx(math.sqrt(20 * 0.25))
    assert all(v.device == weight.device and isinstance(v, torch.Tensor) for _, v in s.scalars())


def test_stats_per_copy_with_batch_dims():
    weight, opt, lam, _ = constructed(batch_dims=1)
    s = opt.stats([("first", weight)])["first"]
    assert s.zero_fraction.tolist() == pytest.approx([9 / 20, 4 / 20])
    assert s.eliminated.tolist() == [2, 1]
    assert s.eliminated_mask.tolist() == [[False, True, False, True, False], [False, False, False, False, True]]
    assert s.coef_mean.tolist() == pytest.approx(lam.reshape(2, -1).mean(1).tolist())
    assert s.shrink_norm.shape == (2,)


def test_stats_before_the_first_step_and_for_other_shapes():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    linear = torch.nn.Linear(3, 2)
    params = [("conv.weight", conv.weight), ("linear.weight", linear.weight)]
    opt = RLNOptimizer(torch.optim.SGD(params, lr=0.1), avg_reg=-6.0, compile=False)
    stats = opt.stats()  # names from the inner optimizer
    assert list(stats) == ["conv.weight", "linear.weight"]
    assert stats["conv.weight"].eliminated is None and stats["conv.weight"].eliminated_mask is None
    fresh = stats["linear.weight"]
    assert fresh.coef_mean.item() == -6.0 and fresh.coef_std.item() == 0.0 and fresh.shrink_norm.item() == 0.0


def test_stats_read_the_folded_state_through_lambdas():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), avg_reg=-4.0, reg_lr=1e4, compile=False)
    x = torch.randn(8, 6)
    for _ in range(4):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    s = opt.stats()["0"]
    lam = opt.lambdas(model.weight)
    assert torch.equal(s.coef_max, lam.max()) and torch.equal(s.coef_min, lam.min())
    assert s.coef_mean.item() == pytest.approx(lam.mean().item())
    assert s.coef_mean.item() < -4.0  # the cap lowered some coefficients after the projection
    r = opt.reg_state[model.weight]["r_prev"]
    assert torch.equal(s.shrink_norm, torch.linalg.vector_norm(r))


def test_log_stats_names_every_scalar():
    weight, opt, _, _ = constructed(batch_dims=1)
    logged = {}
    log_stats(opt.stats({"enc.weight": weight}), logged.__setitem__, prefix="train/rln")
    assert logged["train/rln/enc.weight/eliminated/0"].item() == 2
    assert logged["train/rln/enc.weight/eliminated/1"].item() == 1
    assert "train/rln/enc.weight/coef_std/1" in logged
    assert not any("mask" in name for name in logged)
    assert all(v.ndim == 0 for v in logged.values())
    assert len(logged) == 7 * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (checks that stats() never syncs)")
def test_stats_do_not_sync_on_cuda():
    model = torch.nn.Linear(64, 32).cuda()
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), avg_reg=-6.0, reg_lr=1e5, compile=False)
    x = torch.randn(16, 64, device="cuda")
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = opt.stats()
        log_stats(stats, lambda name, value: None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert stats["0"].eliminated_mask.shape == (64,)


def test_stats_of_a_zero_size_weight_do_not_raise():
    """params=None selects a (0, 5) weight (ndim 2); stats() reports the other tensors as
    usual, whatever it reports for the empty one."""
    empty, w = torch.nn.Parameter(torch.zeros(0, 5)), torch.nn.Parameter(torch.randn(4, 5))
    opt = RLNOptimizer(torch.optim.SGD([w, empty], lr=0.1), avg_reg=-4.0, reg_lr=1e3, compile=False)
    assert opt.regularized_params() == [w, empty]
    for _ in range(2):
        w.grad, empty.grad = torch.randn(4, 5), torch.zeros(0, 5)
        opt.step()
    stats = opt.stats([("w", w), ("empty", empty)])
    assert "w" in stats
    assert stats["w"].eliminated_mask.shape == (5,)
    assert torch.isfinite(stats["w"].coef_mean)


def test_stats_with_a_name_given_twice_drop_no_tensor():
    """Two regularized tensors given the same name: stats() keeps both (under distinct keys)
    or refuses the names with a ValueError; it never drops one silently."""
    a, b = torch.nn.Parameter(torch.randn(4, 5)), torch.nn.Parameter(torch.randn(3, 5))
    opt = RLNOptimizer(torch.optim.SGD([a, b], lr=0.1), avg_reg=-4.0, reg_lr=1e3, compile=False)
    a.grad, b.grad = torch.randn(4, 5), torch.randn(3, 5)
    opt.step()
    try:
        stats, refused = opt.stats([("x", a), ("x", b)]), None
    except ValueError as error:
        stats, refused = None, str(error)
    if refused is not None:
        assert "'x'" in refused
        return
    assert len(stats) == 2
    mins = sorted(s.coef_min.item() for s in stats.values())
    assert mins == sorted([opt.lambdas(a).min().item(), opt.lambdas(b).min().item()])
