"""The machine a benchmark ran on, for its JSON (shared by ``torch-rln bench`` and
``benchmarks/overhead.py``)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from torch_rln import __version__


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """CPU, core count (torch's threads), torch, torch-rln, Python and platform; with a
    ``device``, its name, and the GPU's name for a CUDA one (the first GPU without one)."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": torch.get_num_threads(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_rln": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device is not None:
        info["device"] = str(device)
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(torch.device(device) if device is not None else None)
    return info
