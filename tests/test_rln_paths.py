"""The foreach path of RLNOptimizer equals the per-tensor path, with every inner optimizer."""

import pytest
import torch
from helpers import INNER

from torch_rln import RLNOptimizer
import torch_rln.rln as rln_module
from torch_rln.rln import _multi_tensor_rln, _single_tensor_rln


def two_dtype_model(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
    )
    model[2].double()  # a second dtype among the regularized tensors
    return model


def forward(model, x):
    h = model[1](model[0](x))
    h = model[3](model[2](h.double())).float()
    return model[4](h)


PATH_INNER = ["sgd_momentum", "adam", "adamw_foreach", "adamw_fused", "rmsprop", "lbfgs"]


def train(inner_name, foreach, steps=40):
    model = two_dtype_model()
    groups = [
        {"params": [model[0].weight], "norm": 1, "avg_reg": -5.0, "reg_lr": 1e4},
        {"params": [model[2].weight, model[4].weight], "norm": 2, "avg_reg": -4.0, "reg_lr": 1e3},
    ]
    opt = RLNOptimizer(INNER[inner_name](model.parameters()), groups, foreach=foreach, compile=False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 10, generator=g)
    y = x[:, :2].sum(1, keepdim=True)
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = ((forward(model, x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
    return model, opt


@pytest.mark.parametrize("inner_name", PATH_INNER)
def test_foreach_equals_per_tensor(inner_name):
    model_a, opt_a = train(inner_name, foreach=True)
    model_b, opt_b = train(inner_name, foreach=False)
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=False):
        torch.testing.assert_close(p_a, p_b, rtol=0, atol=0)
    for p_a, p_b in zip(opt_a.regularized_params(), opt_b.regularized_params(), strict=False):
        for key in ("folded", "r_prev"):
            torch.testing.assert_close(opt_a.reg_state[p_a][key], opt_b.reg_state[p_b][key], rtol=0, atol=0)
    # The run did regularize: some weights were zeroed, and the coefficients moved.
    assert (model_a[0].weight == 0).any()
    lam = opt_a.lambdas(model_a[0].weight)
    assert lam.std() > 0
    # The projection sets the mean to avg_reg, and the cap that follows can only lower it.
    assert lam.mean() <= -5.0 + 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_float32_state(dtype):
    outs = []
    for fn in (_single_tensor_rln, _multi_tensor_rln):
        torch.manual_seed(0)
        w = (0.2 * torch.randn(30, 40)).to(dtype)
        acc = torch.full((30, 40), -3.0) + 0.5 * torch.randn(30, 40)
        r_prev = 0.01 * torch.randn(30, 40)
        fn([w], [acc], [r_prev], norm=1, avg_reg=-3.0, reg_lr=100.0, project=True)
        assert acc.dtype == torch.float32
        assert r_prev.dtype == torch.float32
        assert w.dtype == dtype
        assert torch.isfinite(w).all()
        assert torch.isfinite(acc).all()
        outs.append((w, acc, r_prev))
    for a, b in zip(*outs, strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (outs[0][0] == 0).any()


def test_bfloat16_training_stays_finite():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).to(torch.bfloat16)
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), avg_reg=-6.0, reg_lr=1e5)
    x = torch.randn(128, 20).to(torch.bfloat16)
    y = x[:, :1]
    for _ in range(60):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    for p in opt.regularized_params():
        assert opt.lambdas(p).dtype == torch.float32
        assert opt.reg_state[p]["folded"].dtype == torch.float32
        assert torch.isfinite(p).all()
        assert torch.isfinite(opt.lambdas(p)).all()
    assert (model[0].weight == 0).any()


def test_compiled_update_fullgraph_equals_eager(compiler):
    """``torch.compile(fullgraph=True)`` of the update on CPU gives the eager result, and
    both float32 runs track the float64 trajectory equally well."""
    torch._dynamo.reset()

    def run(compile_, dtype):
        torch.manual_seed(0)
        w = torch.nn.Parameter((0.3 * torch.randn(24, 32)).to(dtype))
        opt = RLNOptimizer(torch.optim.SGD([w], lr=0.05), norm=1, avg_reg=-3.0, reg_lr=100.0, compile=compile_)
        g = torch.Generator().manual_seed(1)
        for _ in range(8):
            w.grad = (0.1 * torch.randn(24, 32, generator=g)).to(dtype)
            opt.step()
        return w.detach().clone(), opt.lambdas(w)

    (w_eager, lam_eager), (w_compiled, lam_compiled) = run(False, torch.float32), run(True, torch.float32)
    w_exact, lam_exact = run(False, torch.float64)
    torch.testing.assert_close(w_compiled, w_eager, rtol=1e-5, atol=1e-6)
    # The kernel rounds differently (fused multiply-adds, vectorized exp/log, the order of
    # the sum) and RLN's dynamics amplify rounding: in float32 the coefficients of either
    # path part from the float64 trajectory by up to ~2e-4 relative in 8 steps (eager
    # 7.8e-5, compiled 1.9e-4 on a 2-core AMD EPYC; the other way round on other CPUs),
    # so each is held to float64, not to the other.
    for w, lam in ((w_eager, lam_eager), (w_compiled, lam_compiled)):
        torch.testing.assert_close(w.double(), w_exact, rtol=0, atol=1e-5)
        torch.testing.assert_close(lam.double(), lam_exact, rtol=1e-3, atol=1e-3)
    assert torch.equal(w_compiled == 0, w_eager == 0)
    assert (w_eager == 0).any()


def test_compiled_update_compiles_once_per_dtype_pair(compiler, monkeypatch):
    """Norms, settings, shapes, ranks and stacked copies reuse one compiled kernel per
    (parameter dtype, state dtype); Dynamo's limit of 8 compilations per function is never
    reached by a process that trains many models (it would be a hard error with fullgraph)."""
    from torch._dynamo.utils import counters

    from torch_rln import CompiledKernel

    # From a clean slate: the kernels keep what they compiled (and call it without Dynamo)
    monkeypatch.setattr(rln_module, "_SUMS", CompiledKernel(rln_module._rln_sums_kernel, "RLN"))
    monkeypatch.setattr(rln_module, "_UPDATE", CompiledKernel(rln_module._rln_update_kernel, "RLN"))
    monkeypatch.setattr(rln_module, "_CHECKED", {})
    torch._dynamo.reset()
    counters.clear()
    dtypes = (torch.float32, torch.float64, torch.bfloat16)
    for dtype in dtypes:
        for norm in (1, 2):
            for shape, batch_dims in (
                ((5, 7), 0),
                ((1, 2), 0),  # one copy of two (one of one is refused: its coefficient would be pinned)
                ((3, 1, 4), 0),
                ((0, 3), 0),
                ((4, 6, 5), 1),
                ((0, 3), 1),
            ):
                torch.manual_seed(0)
                w0 = 0.3 * torch.randn(shape)
                results = []
                for compile_ in (False, True):
                    w = torch.nn.Parameter(w0.to(dtype, copy=True))
                    opt = RLNOptimizer(
                        torch.optim.SGD([w], lr=0.05),
                        norm=norm,
                        avg_reg=-3.0 - norm,
                        reg_lr=50.0 * norm,
                        batch_dims=batch_dims,
                        compile=compile_,
                    )
                    g = torch.Generator().manual_seed(1)
                    for _ in range(4):
                        w.grad = 0.1 * torch.randn(shape, generator=g).to(dtype)
                        opt.step()
                    results.append((w.detach().float(), opt.lambdas(w)))
                (w_eager, lam_eager), (w_compiled, lam_compiled) = results
                tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
                torch.testing.assert_close(w_compiled, w_eager, rtol=tol, atol=tol)
                torch.testing.assert_close(lam_compiled, lam_eager, rtol=1e-4, atol=1e-3)
    # two kernels (the sums of the projection, then the update), each compiled once per dtype pair
    assert counters["stats"]["unique_graphs"] == 2 * len(dtypes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_near_the_largest_float_stay_finite_on_every_path(dtype):
    """L1 never forms ``2 w`` (it overflows past half the largest float, and ``inf * 0`` is NaN):
    a weight of 3e38 is shrunk by exp(lam), as every other weight, on all three paths."""
    results = []
    for path in ("per_tensor", "foreach", "compiled"):
        w = torch.nn.Parameter(torch.tensor([[3e38, 0.5, -0.25, 1.0]], dtype=dtype))
        opt = RLNOptimizer(
            torch.optim.SGD([w], lr=1e-3),
            norm=1,
            avg_reg=-5.0,
            reg_lr=1.0,
            foreach=path != "per_tensor",
            compile=path == "compiled",
        )
        for _ in range(3):
            w.grad = torch.full_like(w, 0.1)
            opt.step()
        assert torch.isfinite(w).all(), path
        assert torch.isfinite(opt.lambdas(w)).all(), path
        results.append((w.detach().float(), opt.lambdas(w)))
    for w, lam in results[1:]:
        torch.testing.assert_close(w, results[0][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(lam, results[0][1], rtol=1e-5, atol=1e-5)
