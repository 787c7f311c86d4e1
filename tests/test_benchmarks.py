"""benchmarks/overhead.py runs and writes a complete JSON (no timing is asserted)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("rich")

OVERHEAD = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


def load_overhead():
    spec = importlib.util.spec_from_file_location("overhead", OVERHEAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_published_style_callback_matches_rln(tmp_path):
    """The peer we race against computes the same update as RLNOptimizer."""
    import torch

    from torch_rln import RLNOptimizer

    overhead = load_overhead()
    torch.manual_seed(0)
    w_ours = torch.nn.Parameter(0.05 * torch.randn(20, 30, dtype=torch.float64))
    w_peer = torch.nn.Parameter(w_ours.detach().clone())
    opt = RLNOptimizer(torch.optim.SGD([w_ours], lr=0.1), avg_reg=-4.0, reg_lr=1e3)
    peer_opt = torch.optim.SGD([w_peer], lr=0.1)
    callback = overhead.PublishedStyleCallback(w_peer, avg_reg=-4.0, learning_rate=1e3)
    for _ in range(20):
        grad = 0.1 * torch.randn(20, 30, dtype=torch.float64)
        w_ours.grad, w_peer.grad = grad.clone(), grad.clone()
        opt.step()
        peer_opt.step()
        callback.on_batch_end()
    torch.testing.assert_close(w_ours, w_peer, rtol=0, atol=1e-9)
    assert (w_ours == 0).any()


def test_quick_run_writes_every_figure(tmp_path):
    overhead = load_overhead()
    path = tmp_path / "overhead.json"
    assert overhead.main(["--quick", "--device", "cpu", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert set(report["ratios"]) == set(overhead.RATIO_KEYS) == set(overhead.TARGETS)
    assert all(math.isfinite(v) and v > 0 for v in report["ratios"].values())
    assert report["ratios"]["rln_state_bytes_per_param_byte"] == 2.0
    assert report["state_bytes_per_param_byte"]["rmsln"] == 0.0
    assert {"cpu", "cores", "torch", "device"} <= set(report["machine"])
    for times in report["pass_seconds"].values():
        assert set(times) == {"floor", "floor_with_sums", "rln", "rln_eager"}
    assert report["elements"]["tensor_2p36m"] == 2_359_296
    for set_name in ("boston", "mnist1d", "resnet50"):
        for times in report["step_seconds"][set_name].values():
            assert set(times) == {"bare", "rln", "rln_eager", "rmsln"}
    assert set(report["step_seconds"]["boston"]) == {"sgd_momentum", "adam_foreach", "adam_fused", "adamw", "rmsprop"}


def test_floor_kernel_does_the_pass_work():
    """The floor reads and writes the three tensors and takes one log and one exp per element."""
    import torch

    overhead = load_overhead()
    w = torch.tensor([0.5, -0.25, 1e-3])
    lam = torch.tensor([-1.0, -3.0, -2.0])
    r_prev = torch.tensor([0.1, 0.2, 0.3])
    overhead.floor_kernel(w, lam, r_prev, 1.0, 0.0)
    cap = torch.log(torch.tensor([0.5, 0.25, 1e-3]))
    bound = torch.tensor([-1.0, -3.0, -2.0]) >= cap
    expected_r = torch.where(bound, torch.tensor([0.5, -0.25, 1e-3]), torch.exp(torch.tensor([-1.0, -3.0, -2.0])))
    torch.testing.assert_close(r_prev, expected_r)
    torch.testing.assert_close(lam, torch.where(bound, cap, torch.tensor([-1.0, -3.0, -2.0])))
