"""``torch-rln bench``: run the experiments, show them with rich, write the results.

Results go to ``--out DIR``: one JSON file per experiment, ``report.md`` and PNG figures.
A run interrupted with Ctrl-C keeps and reports every configuration that finished.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from torch_rln import __version__

from . import rmsln_mnist1d
from .bench_rln import run_rln
from .bench_rmsln import run_rmsln
from .machine import cpu_name
from .tabular.run import run_tabular


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MB in the heap instead of unmapping them.

    The experiments allocate the same few-MB temporaries every step; by default glibc
    returns them to the system and every new one page-faults afresh, which costs more than
    the arithmetic on this kind of CPU. A no-op where glibc is absent. Affects this process only.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def resolve_device(name: str, parser: argparse.ArgumentParser) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return name


RUNNERS = {"rln": run_rln, "rmsln": run_rmsln, "tabular": run_tabular}


def check_output_and_storage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """The output folder, created; an unusable ``--out`` or ``--storage`` exits with status 2."""
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {args.out}: cannot create the directory ({error.strerror})")
    if getattr(args, "storage", None):
        try:
            rmsln_mnist1d.make_storage(args.storage, args.heartbeat or 10)
        except Exception as error:  # noqa: BLE001 - any failure to open it is the user's to fix
            parser.error(f"--storage {args.storage}: cannot open this Optuna storage ({type(error).__name__}: {error})")
    return out


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    device = resolve_device(args.device, parser)
    out = check_output_and_storage(args, parser)
    keep_freed_memory()
    console = Console()
    start = time.perf_counter()
    sections, status = [], 0
    for name in [args.experiment] if args.experiment else list(RUNNERS):
        code, section = RUNNERS[name](args, device, out, console)
        sections.append(section)
        if code:
            status = code
            break
    header = [
        "# torch-rln bench report",
        "",
        f"torch-rln {__version__}, torch {torch.__version__}, {cpu_name()}, "
        f"{math.ceil(time.perf_counter() - start)} s.",
        "",
    ]
    (out / "report.md").write_text("\n".join(header) + "\n" + "\n".join(sections))
    console.print(f"Results written to [bold]{out}[/] (report.md, JSON, PNG).")
    return status
