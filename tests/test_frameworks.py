"""Training frameworks that take a torch Optimizer accept the wrappers unchanged.

Skipped when the framework is not installed: the `test` extra installs Lightning and
Accelerate; pytorch-tabular is left out of it (it pins torchmetrics below 1.9, which would
downgrade what the extra installs), so its test runs where it is installed by hand.
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


def test_pytorch_tabular_fit_builds_the_factory_and_saves_it(tmp_path, monkeypatch):
    """pytorch-tabular's ``TabularModel.fit(optimizer=cls, optimizer_params=...)`` builds
    ``cls(model.parameters(), lr=..., **optimizer_params)``: a factory is such a class; the
    wrapper's settings may come through ``optimizer_params``, and ``save_model`` pickles it."""
    pytest.importorskip("pytorch_tabular", reason="pytorch_tabular is not installed (pip install pytorch_tabular)")
    pd = pytest.importorskip("pandas")
    from pytorch_tabular import TabularModel
    from pytorch_tabular.config import DataConfig, OptimizerConfig, TrainerConfig
    from pytorch_tabular.models import CategoryEmbeddingModelConfig

    monkeypatch.chdir(tmp_path)  # pytorch-tabular and Lightning write next to the working directory
    x = tabular_data(n=128).tensors[0]
    df = pd.DataFrame(x.numpy(), columns=[f"x{i}" for i in range(12)])
    df["y"] = df["x0"] + df["x1"]
    model = TabularModel(
        data_config=DataConfig(target=["y"], continuous_cols=[f"x{i}" for i in range(12)]),
        model_config=CategoryEmbeddingModelConfig(task="regression", layers="16-8", learning_rate=1e-2, seed=0),
        optimizer_config=OptimizerConfig(),
        trainer_config=TrainerConfig(
            max_epochs=3, batch_size=32, accelerator="cpu", progress_bar="none", checkpoints=None, load_best=False
        ),
        verbose=False,
    )
    factory = RLNOptimizer.factory(torch.optim.Adam, reg_lr=1e4, compile=False)
    model.fit(train=df, optimizer=factory, optimizer_params={"avg_reg": -5.0})

    opt = model.model.optimizers().optimizer
    assert isinstance(opt, factory) and isinstance(opt.optimizer, torch.optim.Adam)
    assert opt.optimizer.param_groups[0]["lr"] == 1e-2  # the model config's learning rate reached the inner Adam
    assert opt.reg_groups[0]["avg_reg"] == -5.0 and opt.reg_groups[0]["reg_lr"] == 1e4
    regularized = opt.regularized_params()
    assert regularized and all(p.ndim >= 2 for p in regularized)  # every matrix: pytorch-tabular passes no names
    first = model.model._backbone.linear_layers[0].weight
    assert any(p is first for p in regularized)
    assert (first == 0).any()  # RLN ran inside pytorch-tabular's training loop
    assert opt.lambdas(first).std() > 0

    model.save_model(str(tmp_path / "saved"))
    loaded = TabularModel.load_model(str(tmp_path / "saved"))
    assert loaded.model.custom_optimizer is factory  # pickled as its recipe: the same class comes back
    torch.testing.assert_close(
        torch.tensor(loaded.predict(df.head()).to_numpy()), torch.tensor(model.predict(df.head()).to_numpy())
    )
