"""The RMSLN experiment's protocol: its settings, the models compared, the search ranges,
and the published figures they are compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXPERIMENT = "rmsln-mnist1d"
MODELS = ("baseline", "rmsln")
PUBLISHED: dict[str, Any] = {
    "source": "RMSLN write-up (MNIST-1D, Optuna-tuned Adam vs Adam + RMSLN, one run each, 100 epochs)",
    "baseline": {"params": {"lr": 0.00540933691402168}, "final_val_loss": 1.3054},
    "rmsln": {"params": {"lr": 0.004529004680418813, "reg_lambda": 0.0003734033068009905}, "final_val_loss": 1.3818},
    "conclusion": "RMSLN did not help",
}
HOLDOUT_BATCH = 100
LR_RANGE = (1e-4, 1e-1)
REG_LAMBDA_RANGE = (1e-6, 1e-1)


@dataclass
class Settings:
    trials: int = 50
    trial_epochs: int = 30  # the command uses ``epochs`` at full batch (published), where trials are cheap
    epochs: int = 100
    seeds: int = 5
    hidden: tuple[int, ...] = (100, 100)
    batch_size: int | None = None  # None: the whole training set (published), 100 (holdout)
    protocol: str = "published"
    seed: int = 0
    device: str = "cpu"
    storage: str | None = None  # an Optuna storage URL; None: SQLite in the output folder
    study_name: str | None = None  # the shared studies' name (two studies: NAME-baseline, NAME-rmsln)
    heartbeat_seconds: int = 10  # a worker's RUNNING trial is failed after 3 missed heartbeats
    validation_size: int = 800
    seed_list: list[int] | None = None  # the final runs' seeds; None: seed, seed + 1, ... (``seeds`` of them)
    investigate: bool = False  # the batch table and the candidate definitions of the penalty (published only)

    def final_seeds(self) -> list[int]:
        return list(self.seed_list) if self.seed_list is not None else [self.seed + k for k in range(self.seeds)]

    def batch(self, n_train: int) -> int:
        """The training batch for a training set of ``n_train``."""
        if self.batch_size is not None:
            return self.batch_size
        return n_train if self.protocol == "published" else HOLDOUT_BATCH
