"""How rln-0.1.0-sgd-momentum.pt was made: torch-rln 0.1.0 (commit 1f29b15) trains a small
float64 model for 20 steps, saves a checkpoint, and records where 20 more steps take it.

    mkdir -p /tmp/v010 && git archive 1f29b15 torch_rln | tar -x -C /tmp/v010
    python tests/data/make_rln_0_1_0_checkpoint.py

tests/test_rln_optimizer.py loads it with the current version and continues the run.
"""

import copy
import sys

sys.path.insert(0, "/tmp/v010")

import torch  # noqa: E402
import torch_rln  # noqa: E402
from torch_rln import RLNOptimizer  # noqa: E402

assert torch_rln.__file__.startswith("/tmp/v010"), torch_rln.__file__
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), avg_reg=-4.0, reg_lr=1e3)
g = torch.Generator().manual_seed(1)
data = [(x, x[:, :3].sum(1, keepdim=True)) for x in (torch.randn(32, 12, generator=g, dtype=torch.float64)
                                                     for _ in range(40))]


def step(x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


for x, y in data[:20]:
    step(x, y)
checkpoint = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()),
              "lambdas_at_save": [opt.lambdas(p) for p in opt.regularized_params()]}
for x, y in data[20:]:
    step(x, y)
checkpoint["continued_model"] = copy.deepcopy(model.state_dict())
checkpoint["lambdas_continued"] = [opt.lambdas(p) for p in opt.regularized_params()]
torch.save(checkpoint, "tests/data/rln-0.1.0-sgd-momentum.pt")
