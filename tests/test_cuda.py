"""CUDA checks: skipped cleanly where no CUDA device is present (CI has none)."""

import pytest
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def train(device, foreach, dtype=torch.float32, steps=30, sync_check=False, inner=torch.optim.Adam):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(device, dtype)
    opt = RLNOptimizer(inner(model.parameters(), lr=1e-2, foreach=True), avg_reg=-5.0, reg_lr=1e4, foreach=foreach)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 40, generator=g).to(device, dtype)
    y = x[:, :3].sum(1, keepdim=True)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if sync_check:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return model, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_foreach_equals_per_tensor_and_cpu(dtype):
    model_a, opt_a = train("cuda", True, dtype)
    model_b, opt_b = train("cuda", False, dtype)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert (model_a[0].weight == 0).any()
    for p in opt_a.regularized_params():
        assert opt_a.reg_state[p]["folded"].dtype == torch.float32
        assert torch.isfinite(opt_a.lambdas(p)).all()


def test_cuda_step_has_no_host_sync():
    # Inner SGD: its own step syncs nothing, so any sync would be the wrapper's.
    model, opt = train("cuda", True, steps=5, sync_check=True, inner=torch.optim.SGD)
    assert (model[0].weight == 0).any()


@pytest.mark.parametrize("decoupled", [False, True])
def test_cuda_rmsln_foreach_equals_per_tensor_without_host_sync(decoupled):
    results = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()
        opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=1e-2), reg_lambda=1e-2,
                           decoupled=decoupled, foreach=foreach)
        x = torch.randn(128, 40, device="cuda")
        for _ in range(10):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), x[:, :1]).backward()
            torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("wrap", ["rln", "rmsln", "rmsln_over_rln"])
def test_cuda_whole_step_captures_in_a_cuda_graph(wrap):
    """As with torch's capturable optimizers, forward, backward and the wrapped step go into one
    CUDA graph after a few warm-up steps (the settings are cached on the device, the kernels
    are called without Dynamo, nothing syncs), and replaying it equals stepping eagerly."""

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, capturable=True)
        if wrap in ("rln", "rmsln_over_rln"):
            opt = RLNOptimizer(opt, params=[model[0].weight], avg_reg=-5.0, reg_lr=1e4)
        if wrap in ("rmsln", "rmsln_over_rln"):
            opt = RMSLNWrapper(opt, reg_lambda=1e-2)
        return model, opt

    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 40, generator=g).cuda()
    y = x[:, :3].sum(1, keepdim=True)

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    eager_model, eager_opt = build()
    for _ in range(12):
        step(eager_model, eager_opt)

    model, opt = build()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(model, opt)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    for _ in range(9):
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if wrap != "rmsln":
        assert (model[0].weight == 0).any()


@pytest.mark.parametrize("foreach", [True, False])
def test_rln_state_moves_with_the_optimizer_state_from_cpu_to_cuda(foreach):
    """Trained 5 steps on the CPU, the model moved to CUDA, the optimizer state moved as
    Lightning moves it; 5 more steps on CUDA equal 5 more on the CPU (to float32 rounding),
    and every state tensor is on CUDA. (test_wrapper.py checks the same move to ``meta`` on
    any machine.)"""
    from helpers import module_to, optimizer_to_device

    def run(move):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), avg_reg=-5.0, reg_lr=1e4, foreach=foreach)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 12, generator=g)
        for k in range(10):
            if k == 5 and move:
                module_to(model, "cuda")
                optimizer_to_device(opt, torch.device("cuda"))
                x = x.cuda()
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), x[:, :3].sum(1, keepdim=True)).backward()
            opt.step()
        return model, opt

    (moved, moved_opt), (stayed, _) = run(True), run(False)
    for a, b in zip(moved.parameters(), stayed.parameters(), strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)
    state = moved_opt.state_dict()["state"]
    assert all(v.is_cuda for entry in state.values() for k, v in entry.items() if k != "step")
