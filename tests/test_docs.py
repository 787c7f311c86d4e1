"""Every Python block of the documentation runs, offline: README.md, CONTRIBUTING.md,
docs/**/*.md and the files the site includes from them.

A block runs in a fresh namespace. A marker on the line before its fence says more:

* ``<!-- docs-test: NAME -->`` (``readme-test`` in the README): run it after the prelude
  NAME, which defines the names it uses but does not define (the data and model it refers
  to, kept out of the docs to keep the snippets short); see ``PRELUDES``;
* ``<!-- docs-test: skip (reason) -->``: it cannot run here, and the reason says why.

A block without a marker must run as it is. The RLN update runs eagerly here: the compiled
path is tested elsewhere and its first compile would only cost time.
"""

from __future__ import annotations

import contextlib
import os
import re
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_rln.rln

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^\s*<!-- (?:readme|docs)-test: (?P<what>.+?) -->\s*$")
SKIP = re.compile(r"^skip \((?P<reason>.+)\)$")
INCLUDE = re.compile(r'^--8<-- "(?P<path>[^"]+)"\s*$', re.M)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    name: str | None  # the prelude, or None
    skip: str | None  # the reason, or None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}" + (f"[{self.name}]" if self.name else "")


def documents() -> list[Path]:
    """The Markdown files whose blocks must run: README, CONTRIBUTING, docs/, and what docs/ includes."""
    paths = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in list(paths):
        for match in INCLUDE.finditer(page.read_text()):
            included = (ROOT / match["path"]).resolve()
            if included not in paths:
                paths.append(included)
    return paths


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(opening["fence"]):
            end += 1
        if opening["lang"] in ("python", "py"):
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(previous)
            what = marker["what"] if marker else None
            skipped = SKIP.match(what) if what else None
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            found.append(
                Block(path, i + 1, code, None if skipped else what, skipped["reason"].strip() if skipped else None)
            )
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks_of(path)]


# ---------------------------------------------------------------- preludes
class DictLossRegressor(torch.nn.Module):
    """What HF Trainer calls: forward(**batch) -> {"loss": ...}."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(12, 1)

    def forward(self, x, labels=None):
        pred = self.net(x).squeeze(-1)
        return {"logits": pred, "loss": torch.nn.functional.mse_loss(pred, labels)}


def tabular(n=90, features=12):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return x, x[:, :2].sum(1, keepdim=True)


def loader_of(x, y, batch_size=16):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def mlp_prelude() -> dict:
    """A model, its data and a loop: what the guides' short snippets refer to."""
    x, y = tabular()
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    loader = loader_of(x, y)

    def train(model, opt, epochs=3):
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(xb), yb).backward()
                opt.step()

    return {
        "torch": torch,
        "RLNOptimizer": torch_rln.RLNOptimizer,
        "RMSLNWrapper": torch_rln.RMSLNWrapper,
        "model": model,
        "loader": loader,
        "loss": torch.nn.functional.mse_loss(model(x), y),
        "train": train,
    }


@contextlib.contextmanager
def one_process_group(tmp_path):
    """A process group of one (gloo), as ZeroRedundancyOptimizer needs one."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def zero_prelude() -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return {**mlp_prelude(), "ZeroRedundancyOptimizer": ZeroRedundancyOptimizer}


def tabular_frame_prelude() -> dict:
    pd = pytest.importorskip("pandas")
    x, y = tabular(n=128)
    df = pd.DataFrame(x.numpy(), columns=[f"x{i}" for i in range(x.shape[1])])
    df["y"] = y[:, 0].numpy()
    return {"torch": torch, "df": df}


def _x_y_numpy(**extra) -> dict:
    x, y = tabular()
    return {"torch": torch, "X": x.numpy().astype(np.float32), "y": y.numpy().astype(np.float32), **extra}


PRELUDES = {
    "quick-start": lambda: {"torch": torch, "loader": loader_of(*tabular(n=20, features=1013), batch_size=10)},
    "classification": dict,
    "contributing": dict,
    "skorch": _x_y_numpy,
    "skorch-classifier": lambda: {**_x_y_numpy(), "labels": (tabular()[1][:, 0] > 0).long().numpy()},
    "hf-trainer": lambda: {
        "torch": torch,
        "model": DictLossRegressor(),
        "train_dataset": [{"x": x, "labels": y[0]} for x, y in zip(*tabular(n=64), strict=True)],
    },
    "lightning": lambda: {"torch": torch, "loader": loader_of(*tabular())},
    "accelerate": lambda: {
        "torch": torch,
        "model": torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)),
        "loader": loader_of(*tabular()),
        "RLNOptimizer": torch_rln.RLNOptimizer,
    },
    "pytorch-tabular": tabular_frame_prelude,
    "mlp": mlp_prelude,
    "zero": zero_prelude,
}

# The packages a prelude's snippet needs (it skips without them, and says why).
NEEDS = {
    "skorch": ("skorch", "sklearn"),
    "skorch-classifier": ("skorch", "sklearn"),
    "hf-trainer": ("transformers",),
    "lightning": ("pytorch_lightning",),
    "accelerate": ("accelerate",),
    "pytorch-tabular": ("pytorch_tabular",),
}

# Each integration is shown, and so run, somewhere in the docs.
INTEGRATIONS = {"classification", "skorch", "hf-trainer", "lightning", "accelerate", "contributing", "pytorch-tabular"}

BLOCKS = all_blocks()


# ---------------------------------------------------------------- the checks
def test_the_docs_mark_every_integration():
    names = {b.name for b in BLOCKS}
    assert names >= INTEGRATIONS
    assert {b.name for b in blocks_of(README)} == {"quick-start", "classification", "skorch"}


def test_every_marker_names_a_prelude_or_a_reason():
    for block in BLOCKS:
        if block.skip is None:
            assert block.name is None or block.name in PRELUDES, f"{block.id}: no prelude named {block.name!r}"
        else:
            assert block.skip, f"{block.id}: a skipped block must say why"
    unused = set(PRELUDES) - {b.name for b in BLOCKS}
    assert not unused, f"preludes no block uses: {sorted(unused)}"


def test_the_docs_have_python_blocks_everywhere_they_should():
    """The scan finds the blocks (a broken fence pattern would make every other test vacuous)."""
    files = {b.path.name for b in BLOCKS}
    assert {"README.md", "CONTRIBUTING.md", "frameworks.md", "getting-started.md"} <= files
    assert len(BLOCKS) >= 20


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.skip is None], ids=lambda b: b.id)
def test_block_runs(block, tmp_path, monkeypatch, capsys):
    for module in NEEDS.get(block.name, ()):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install 'torch-rln[test]')")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch_rln.rln, "compiled_kernel_works", lambda *args, **kwargs: False)
    monkeypatch.chdir(tmp_path)  # TrainingArguments(output_dir="out"), torch.save(...) write here
    torch.manual_seed(0)
    group = one_process_group(tmp_path) if block.name == "zero" else contextlib.nullcontext()
    with group, warnings.catch_warnings():
        namespace = {"__name__": f"docs_{block.line}", **(PRELUDES[block.name]() if block.name else {})}
        exec(compile(block.code, block.id, "exec"), namespace)
    out = capsys.readouterr().out
    if block.name == "classification":
        assert "inputs eliminated" in out
    if block.name == "hf-trainer":
        assert os.path.isdir(tmp_path / "out")
    if block.name == "contributing":
        assert "reg group 0: 1 tensor(s), decay=0.5" in out
    if block.name == "pytorch-tabular":
        opt = namespace["opt"]
        assert isinstance(opt, torch_rln.RLNOptimizer)
        assert opt.reg_groups[0]["avg_reg"] == -5.0  # optimizer_params reached the wrapper
        assert any((p == 0).any() for p in opt.regularized_params())  # RLN ran inside pytorch-tabular's loop


def test_skipped_blocks_are_few():
    """A skip is a block nobody runs: keep them rare, each with its reason."""
    skipped = [b.id for b in BLOCKS if b.skip is not None]
    assert len(skipped) <= 3, skipped


def test_the_readme_links_reach_files():
    """The README is read on its own (on a forge, in an editor): its relative links name files of the repo."""
    text = re.sub(r"<!--.*?-->", "", README.read_text(), flags=re.S)  # a commented-out figure is not a link yet
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if "://" not in link and not link.startswith("#")]
    assert relative, "the README links into the documentation"
    missing = [link for link in relative if not (ROOT / link.split("#")[0]).is_file()]
    assert not missing, missing
