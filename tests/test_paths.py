"""Which implementation runs: compile=None compiles where it can and says so where it cannot;
the flags take True, False or None only."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import torch_rln.rln as rln_module
from torch_rln import RLNOptimizer, RMSLNWrapper
from torch_rln import CompiledKernel


@pytest.mark.parametrize("cls", [RLNOptimizer, RMSLNWrapper])
@pytest.mark.parametrize("flag", ["foreach", "compile"])
@pytest.mark.parametrize("value", ["no", "yes", 0.0001, 1, 0])
def test_flags_take_true_false_or_none(cls, flag, value):
    w = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(TypeError, match=rf"Invalid {flag}: {value!r} \(expected True, False or None\)"):
        cls(torch.optim.SGD([w], lr=0.1), **{flag: value})


def _train(compile_, steps=6):
    torch.manual_seed(0)
    w = torch.nn.Parameter(0.3 * torch.randn(16, 24))
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.05), avg_reg=-3.0, reg_lr=100.0, compile=compile_)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        w.grad = 0.1 * torch.randn(16, 24, generator=g)
        opt.step()
    return w.detach().clone(), opt.lambdas(w)


def test_compile_none_falls_back_with_one_warning_where_compile_fails(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(rln_module, "_SUMS", CompiledKernel(rln_module._rln_sums_kernel, "RLN"))
    monkeypatch.setattr(rln_module, "_UPDATE", CompiledKernel(rln_module._rln_update_kernel, "RLN"))
    monkeypatch.setattr(rln_module, "_CHECKED", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w_auto, lam_auto = _train(None)
        _train(None)  # a second optimizer in the same process: no second warning
    messages = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "torch.compile does not work here" in messages[0]
    assert "InvalidCxxCompiler" in messages[0]
    assert "compile=False" in messages[0]  # how to silence it
    w_eager, lam_eager = _train(False)
    assert torch.equal(w_auto, w_eager)
    assert torch.equal(lam_auto, lam_eager)
    with pytest.raises(RuntimeError, match=r"cannot build the RLN kernel.*use compile=None"):
        _train(True)


def test_compile_none_runs_the_compiled_kernel_where_it_works(compiler):
    w = torch.nn.Parameter(torch.randn(4, 5))
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1))
    assert opt.implementation(w.device, w.dtype, sharded=False) is rln_module._compiled_rln
    assert opt.implementation(w.device, w.dtype, sharded=True) is rln_module._multi_tensor_rln
    eager = RLNOptimizer(torch.optim.SGD([w], lr=0.1), compile=False, foreach=False)
    assert eager.implementation(w.device, w.dtype, sharded=False) is rln_module._single_tensor_rln


def test_without_a_cxx_compiler_training_runs_eagerly_after_one_warning(tmp_path):
    """A fresh process whose compiler does not exist (a machine without one): the default
    optimizer warns once and trains exactly as compile=False does."""
    script = textwrap.dedent("""
        import warnings, torch
        from torch_rln import RLNOptimizer
        def train(compile_):
            torch.manual_seed(0)
            w = torch.nn.Parameter(0.3 * torch.randn(8, 8))
            opt = RLNOptimizer(torch.optim.SGD([w], lr=0.05), avg_reg=-3.0, reg_lr=100.0, compile=compile_)
            for k in range(5):
                w.grad = torch.full_like(w, 0.01 * (k + 1))
                opt.step()
            return w.detach(), opt.lambdas(w)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            auto = train(None)
        eager = train(False)
        runtime = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
        print(len(runtime), "compiler" in runtime[0].lower() if runtime else None,
              all(torch.equal(a, b) for a, b in zip(auto, eager)))
    """)
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "True", "True"], out.stdout + out.stderr[-2000:]


def test_a_step_inside_an_outer_torch_compile_equals_eager(compiler):
    """``torch.compile`` of a whole training step: the wrapper's kernel is traced as plain code."""
    torch.manual_seed(0)
    model, twin = torch.nn.Linear(20, 5), torch.nn.Linear(20, 5)
    twin.load_state_dict(model.state_dict())
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), avg_reg=-5.0, reg_lr=100.0)
    reference = RLNOptimizer(torch.optim.SGD(twin.parameters(), lr=0.1), avg_reg=-5.0, reg_lr=100.0, compile=False)
    x, y = torch.randn(64, 20), torch.randn(64, 5)

    @torch.compile
    def train_step():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    for _ in range(4):
        train_step()
        reference.zero_grad()
        torch.nn.functional.mse_loss(twin(x), y).backward()
        reference.step()
    torch.testing.assert_close(model.weight, twin.weight, rtol=1e-5, atol=1e-6)
    assert 0 < (twin.weight == 0).sum() < twin.weight.numel()
