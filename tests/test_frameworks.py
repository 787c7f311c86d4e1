"""Training frameworks that take a torch Optimizer accept the wrappers unchanged.

Skipped when the framework is not installed (the `test` extra installs both).
"""

import pytest
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper


def tabular_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :2].sum(1, keepdim=True))


def lightning_module(pl, configure_optimizers):
    """A small regression LightningModule whose optimizers come from ``configure_optimizers(module)``."""

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return configure_optimizers(self)

    torch.manual_seed(0)
    return Module()


def test_lightning_trainer_with_scheduler_and_checkpoint(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")

    def configure(module):
        opt = RLNOptimizer(torch.optim.Adam(module.parameters(), lr=1e-2), avg_reg=-5.0, reg_lr=1e4)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}

    module = lightning_module(pl, configure)
    loader = torch.utils.data.DataLoader(tabular_data(), batch_size=8)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    opt = trainer.optimizers[0]
    assert isinstance(opt, RLNOptimizer)
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    weight = module.net[0].weight
    assert (weight == 0).any()  # RLN ran inside Lightning's optimizer step
    lam = opt.lambdas(weight)

    # Lightning's checkpoint holds the RLN state and restores it.
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    saved = checkpoint["optimizer_states"][0]
    assert torch.equal(saved["state"][0]["rln_lam"], lam)
    fresh = RLNOptimizer(torch.optim.Adam(module.parameters(), lr=1e-2), avg_reg=-5.0, reg_lr=1e4)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.lambdas(weight), lam)


def test_accelerate_prepare_and_train():
    accelerate = pytest.importorskip("accelerate")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), avg_reg=-5.0, reg_lr=1e4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    loader = torch.utils.data.DataLoader(tabular_data(), batch_size=8)
    accelerator = accelerate.Accelerator(cpu=True)
    model, p_opt, loader, p_sched = accelerator.prepare(model, opt, loader, sched)
    losses = []
    for _ in range(3):
        for x, y in loader:
            p_opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            p_opt.step()
            p_sched.step()
            losses.append(loss.item())
    assert p_opt.optimizer is opt
    assert (model[0].weight == 0).any()
    assert opt.lambdas(model[0].weight).std() > 0
    assert opt.optimizer.param_groups[0]["lr"] < 0.05  # the scheduler reached the inner optimizer
    state = p_opt.state_dict()
    assert "rln_groups" in state and "rln_lam" in state["state"][0]


def test_lightning_trainer_with_nested_wrappers():
    pl = pytest.importorskip("pytorch_lightning")

    def configure(module):
        inner = RLNOptimizer(torch.optim.Adam(module.parameters(), lr=1e-2), avg_reg=-5.0, reg_lr=1e4)
        return RMSLNWrapper(inner, reg_lambda=1e-2)

    module = lightning_module(pl, configure)
    start = module.net[2].weight.detach().clone()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, torch.utils.data.DataLoader(tabular_data(), batch_size=8))
    opt = trainer.optimizers[0]
    assert isinstance(opt, RMSLNWrapper) and isinstance(opt.optimizer, RLNOptimizer)
    assert (module.net[0].weight == 0).any()
    assert not torch.equal(start, module.net[2].weight)
    sd = opt.state_dict()
    assert "rmsln_groups" in sd and "rln_groups" in sd and "rln_lam" in sd["state"][0]
