"""RMSLN's update paths: foreach equals per-tensor (the wrapper and the functional form),
the compiled kernel equals eager and compiles once, and low-precision dtypes stay finite."""

import math

import pytest
import torch
from helpers import make_model, mse, noise_batches, params_of, train, weights
from torch import nn

from torch_rln.rmsln import RMSLNWrapper, _compiled_rmsln, rms_penalty, rmsln_update

LAM = 0.05
SIZES = (8, 16, 4)


def test_foreach_equals_single_tensor_wrapper():
    """Several groups with different settings, float32 and float64 in one wrapper, both modes."""

    def build(foreach, decoupled):
        torch.manual_seed(0)
        a = nn.Linear(8, 16)
        b = nn.Linear(16, 12).double()
        c = nn.Linear(12, 4).double()
        model = (a, b, c)
        inner = torch.optim.Adam([*a.parameters(), *b.parameters(), *c.parameters()], lr=1e-2)
        groups = [
            {"params": [a.weight, c.weight], "reg_lambda": 0.1, "target": 0.5},
            {"params": [b.weight], "reg_lambda": 0.02, "target": 2.0},
            {"params": [a.bias, b.bias]},
        ]
        return model, RMSLNWrapper(inner, groups, reg_lambda=0.3, decoupled=decoupled, foreach=foreach)

    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(16, 8, generator=gen) for _ in range(4)]
    for decoupled in (False, True):
        results = []
        for foreach in (True, False):
            (a, b, c), opt = build(foreach, decoupled)
            assert opt.reg_groups[2]["reg_lambda"] == 0.3
            assert opt.reg_groups[2]["target"] == 1.0
            for k in range(25):
                opt.zero_grad()
                c(torch.relu(b(torch.relu(a(xs[k % 4])).double()))).square().mean().backward()
                opt.step()
            results.append([p.detach().clone() for m in (a, b, c) for p in m.parameters()])
        for p, q in zip(*results, strict=False):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_foreach_equals_single_tensor_functional():
    torch.manual_seed(0)
    params = [
        torch.randn(5, 6),
        torch.zeros(3, 3),
        torch.randn(4, dtype=torch.float64),
        torch.randn(6, 2).to(torch.bfloat16),
        torch.empty(0, 3),
        torch.randn(2, 2, dtype=torch.float16),
    ]
    lams, tgts = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1.0, 0.5, 2.0, 1.0, 1.0, 0.1]
    for alphas in (None, [-0.1, -0.2, torch.tensor(-0.3), -0.4, -0.5, -0.6]):
        out = []
        for foreach in (True, False):
            ps = [p.clone() for p in params]
            with torch.no_grad():
                rms = rmsln_update(ps, ps, reg_lambdas=lams, targets=tgts, alphas=alphas, foreach=foreach)
            out.append((ps, rms))
        (ps_a, rms_a), (ps_b, rms_b) = out
        for p, q, orig in zip(ps_a, ps_b, params, strict=False):
            assert p.dtype == orig.dtype
            torch.testing.assert_close(p, q, rtol=1e-6, atol=0)
        assert rms_a[4] is None
        assert rms_b[4] is None
        for i in (0, 1, 2, 3, 5):
            assert rms_a[i].dtype == (torch.float64 if i == 2 else torch.float32)
            torch.testing.assert_close(rms_a[i], rms_b[i], rtol=1e-6, atol=0)
        # something moved (except the zero tensor)
        assert not torch.equal(ps_a[0], params[0])
        assert torch.equal(ps_a[1], params[1])


@pytest.mark.parametrize("decoupled", [False, True])
def test_bfloat16_runs_finite(decoupled):
    model = make_model(sizes=SIZES, dtype=torch.bfloat16)
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.05), reg_lambda=1.0, decoupled=decoupled)
    before = rms_penalty(weights(model), 1.0).item()
    batches = noise_batches(dtype=torch.bfloat16)
    for k in range(20):
        opt.zero_grad()
        mse(model, *batches[k % 4]).float().backward()
        assert all(w.grad.dtype == torch.bfloat16 for w in weights(model))
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert rms_penalty(weights(model), 1.0).item() < before  # pulled toward rms 1


def test_compiled_update_matches_eager(compiler):
    results = []
    for compile in (True, False):
        model = make_model(sizes=SIZES)
        opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=LAM, compile=compile)
        train(model, opt, noise_batches(), 2)
        assert (opt.implementation(torch.device("cpu"), torch.float32, False) is _compiled_rmsln) == compile
        results.append(params_of(model))
    for p, q in zip(*results, strict=False):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert math.isfinite(results[0][0].sum().item())


def test_compiled_update_compiles_once_per_dtype_for_any_model(compiler, monkeypatch):
    """Models with different numbers and shapes of tensors, other settings, coupled and
    decoupled, float and tensor learning rates (decoupled) reuse one compiled kernel: Dynamo's
    limit of 8 compilations per function (a hard error with fullgraph) is never reached."""
    from torch._dynamo.utils import counters

    import torch_rln.rmsln as rmsln_module
    from torch_rln import CompiledKernel

    # From a clean slate: the kernel keeps what it compiled (and calls it without Dynamo)
    monkeypatch.setattr(rmsln_module, "_KERNEL", CompiledKernel(rmsln_module._fused_rmsln_kernel, "RMSLN"))
    torch._dynamo.reset()
    counters.clear()
    for n in range(1, 11):
        for lr in (0.1, torch.tensor(0.1)):
            ps = [torch.nn.Parameter(torch.randn(4, 3 + k)) for k in range(n)] + [torch.nn.Parameter(torch.randn(1, 1))]
            twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
            settings = {"reg_lambda": 0.3 + 0.01 * n, "target": 1.0 - 0.05 * n, "decoupled": n % 2 == 0}
            opt = RMSLNWrapper(torch.optim.SGD(ps, lr=lr), compile=True, **settings)
            eager = RMSLNWrapper(torch.optim.SGD(twins, lr=lr), **settings)
            for _ in range(2):
                for p, q in zip(ps, twins, strict=False):
                    p.grad = torch.ones_like(p)
                    q.grad = torch.ones_like(q)
                opt.step()
                eager.step()
            for p, q in zip(ps, twins, strict=False):
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert counters["stats"]["unique_graphs"] == 1
