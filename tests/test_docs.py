"""The README's marked Python snippets run, offline.

A snippet marked ``<!-- readme-test: NAME -->`` on the line before its fence runs here in a
fresh namespace, after the prelude for NAME (the data and model it refers to, kept out of
the README to keep the snippets short). The RLN update runs eagerly here: the compiled
path is tested elsewhere and its first compile would only cost time.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_rln.rln

README = Path(__file__).resolve().parent.parent / "README.md"
MARKED = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```python\n(.*?)```", re.S)


def snippets() -> dict[str, str]:
    return dict(MARKED.findall(README.read_text()))


class DictLossRegressor(torch.nn.Module):
    """What HF Trainer calls: forward(**batch) -> {"loss": ...}."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(12, 1)

    def forward(self, x, labels=None):
        pred = self.net(x).squeeze(-1)
        return {"logits": pred, "loss": torch.nn.functional.mse_loss(pred, labels)}


def tabular(n=90):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g)
    return x, x[:, :2].sum(1, keepdim=True)


def prelude(name: str) -> dict:
    """The names a snippet uses but does not define."""
    x, y = tabular()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    return {
        "classification": {},
        "contributing": {},
        "skorch": {"torch": torch, "X": x.numpy().astype(np.float32), "y": y.numpy().astype(np.float32)},
        "hf-trainer": {"torch": torch, "model": DictLossRegressor(),
                       "train_dataset": [{"x": x[i], "labels": y[i, 0]} for i in range(64)]},
        "lightning": {"torch": torch, "loader": loader},
        "accelerate": {"torch": torch, "model": model, "loader": loader,
                       "RLNOptimizer": torch_rln.RLNOptimizer},
    }[name]


NEEDS = {"skorch": "skorch", "hf-trainer": "transformers", "lightning": "pytorch_lightning", "accelerate": "accelerate"}


def test_the_readme_marks_every_integration():
    assert set(snippets()) == {"classification", "skorch", "hf-trainer", "lightning", "accelerate", "contributing"}


@pytest.mark.parametrize("name", sorted(snippets()))
def test_snippet_runs(name, tmp_path, monkeypatch, capsys):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"{NEEDS[name]} is not installed (pip install 'torch-rln[test]')")
    if name == "skorch":
        pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'torch-rln[test]')")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch_rln.rln, "compiled_kernel_works", lambda *args, **kwargs: False)
    monkeypatch.chdir(tmp_path)  # TrainingArguments(output_dir="out") writes here
    torch.manual_seed(0)
    namespace = {"__name__": f"readme_{name.replace('-', '_')}", **prelude(name)}
    exec(compile(snippets()[name], f"README.md[{name}]", "exec"), namespace)
    if name == "classification":
        assert "inputs eliminated" in capsys.readouterr().out
    if name == "hf-trainer":
        assert os.path.isdir(tmp_path / "out")
    if name == "contributing":
        assert "reg group 0: 1 tensor(s), decay=0.5" in capsys.readouterr().out
