"""``python -m torch_rln``: a one-minute demonstration of RLNOptimizer.

Trains the same small MLP on a synthetic tabular task (a few informative features
hidden among many noise features) with plain RMSprop and with RMSprop wrapped in
RLNOptimizer, and prints the test error and how much of the first layer's weight
mass sits on the informative features. The published experiments are run by
``torch-rln bench``.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import RLNOptimizer, __version__

Split = tuple[torch.Tensor, torch.Tensor]


def make_data(n_train: int, n_test: int, informative: int, noise: int, seed: int) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, informative + noise, generator=g)
    coef = torch.randn(informative, generator=g)
    real = x[:, :informative]
    y = real @ coef + 0.5 * torch.relu(real[:, 0] * real[:, 1]) + 0.1 * torch.randn(len(x), generator=g)
    return (x[:n_train], y[:n_train, None]), (x[n_train:], y[n_train:, None])


def train(data: tuple[Split, Split], use_rln: bool, args: argparse.Namespace) -> tuple[float, float, float]:
    (x, y), (x_test, y_test) = data
    torch.manual_seed(args.seed)
    first = torch.nn.Linear(x.shape[1], 32)
    model = torch.nn.Sequential(first, torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt: torch.optim.Optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    if use_rln:
        opt = RLNOptimizer(opt, params=[first.weight], norm=1, avg_reg=args.avg_reg, reg_lr=args.reg_lr)
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x), generator=g).split(args.batch_size):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(x_test), y_test).item()
        mass = first.weight.abs().sum(0)
        informative_share = (mass[: args.informative].sum() / mass.sum()).item()
        zeros = first.weight.eq(0).float().mean().item()
    return mse, informative_share, zeros


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torch_rln", description=__doc__.splitlines()[0])
    parser.add_argument("--informative", type=int, default=8)
    parser.add_argument("--noise", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--avg-reg", type=float, default=-10.0)
    parser.add_argument("--reg-lr", type=float, default=1e6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))

    data = make_data(300, 300, args.informative, args.noise, args.seed)
    print(f"torch-rln {__version__}, torch {torch.__version__}")
    print(
        f"Synthetic regression: {args.informative} informative + {args.noise} noise features, "
        f"300 training rows, MLP {args.informative + args.noise}-32-1, RMSprop, {args.epochs} epochs"
    )
    print(f"{'model':<34}{'test MSE':>10}{'informative share':>20}{'zero weights':>14}{'seconds':>9}")
    for label, use_rln in (("RMSprop", False), (f"RLN(avg_reg={args.avg_reg:g}, reg_lr={args.reg_lr:g})", True)):
        start = time.perf_counter()
        mse, share, zeros = train(data, use_rln, args)
        print(f"{label:<34}{mse:>10.3f}{share:>20.1%}{zeros:>14.1%}{time.perf_counter() - start:>9.1f}")
    print(
        f"(informative share: first-layer |weight| mass on the informative features; uniform would be "
        f"{args.informative / (args.informative + args.noise):.1%})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
