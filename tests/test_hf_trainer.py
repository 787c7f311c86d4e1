"""HF ``Trainer`` with RLN: through ``optimizers=(opt, scheduler)`` and through
``optimizer_cls_and_kwargs=(RLNOptimizer.factory(...), kwargs)``; checkpoints hold the RLN
state and resuming from one continues the run exactly.

A tiny torch model built here; nothing is downloaded (HF_HUB_OFFLINE=1). Skipped when
transformers is missing (the ``test`` extra installs it).
"""

import os

import pytest
import torch

from torch_rln import RLNOptimizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the hub
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'torch-rln[test]')"
)

RLN_ADAMW = RLNOptimizer.factory(torch.optim.AdamW, avg_reg=-6.0, reg_lr=1e4, compile=False)


class TabularRegressor(torch.nn.Module):
    """An MLP whose forward returns what Trainer reads: a dict with the loss."""

    def __init__(self, features=10):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(features, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def forward(self, x, labels=None):
        pred = self.net(x).squeeze(-1)
        out = {"logits": pred}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(pred, labels)
        return out


def dataset(n=64, features=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = x[:, 0] - 2 * x[:, 1]
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def arguments(out, **kwargs):
    settings = dict(
        output_dir=str(out), per_device_train_batch_size=8, max_steps=8, save_strategy="steps", save_steps=4,
        logging_strategy="no", report_to="none", use_cpu=True, learning_rate=1e-2, seed=0,
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
    )
    return transformers.TrainingArguments(**{**settings, **kwargs})


def trainer(out, **kwargs):
    model = TabularRegressor()
    return model, transformers.Trainer(model=model, args=arguments(out), train_dataset=dataset(), **kwargs)


def test_trainer_with_an_optimizer_and_scheduler(tmp_path):
    model = TabularRegressor()
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), avg_reg=-6.0, reg_lr=1e4, compile=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    run = transformers.Trainer(model=model, args=arguments(tmp_path), train_dataset=dataset(), optimizers=(opt, sched))
    run.train()
    assert opt.lambdas(model.net[0].weight).std() > 0
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 9)  # the scheduler drove the inner optimizer
    saved = torch.load(tmp_path / "checkpoint-8" / "optimizer.pt", weights_only=True)
    assert torch.equal(saved["state"][0]["rln_lam"], opt.lambdas(model.net[0].weight))


def test_trainer_builds_the_factory_and_resumes_exactly(tmp_path):
    kwargs = {"lr": 1e-2, "avg_reg": -5.0}
    model, run = trainer(tmp_path / "full", optimizer_cls_and_kwargs=(RLN_ADAMW, kwargs))
    run.train()
    opt = run.optimizer
    while not isinstance(opt, RLNOptimizer):
        opt = opt.optimizer  # accelerate's AcceleratedOptimizer around it
    assert type(opt) is RLN_ADAMW
    assert opt.regularized_params() == [model.net[0].weight, model.net[2].weight]  # the matrices, not the biases
    assert opt.reg_groups[0]["avg_reg"] == -5.0
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]  # Trainer's decay / no-decay groups
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert "rln_lam" in torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"][0]

    resumed_model, resumed = trainer(tmp_path / "resumed", optimizer_cls_and_kwargs=(RLN_ADAMW, kwargs))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
