"""The console scripts' entry points. They import their command only when run, so that a missing training extra
(click, h5py, torchvision, ...) is one clear line instead of a traceback, and an interruption while the command's
modules load (torch's initialization cannot be interrupted safely) is one line with exit code 130."""

from __future__ import annotations

import importlib
import signal
import sys
from types import FrameType, ModuleType

_EXTRAS = "pip install 'pyro_spn[train]' (or '[experiment]' for pyrospn-experiment)"


def _import_uninterrupted(module: str) -> tuple[ModuleType, bool]:
    """Imports ``module`` with an interruption (SIGINT) held back until it is loaded; returns the module and
    whether an interruption came meanwhile."""
    interruptions: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        interruptions.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        return importlib.import_module(module), bool(interruptions)
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(module: str, command: str, prog_name: str) -> None:
    try:
        cli, interrupted = _import_uninterrupted(module)
    except ImportError as error:
        sys.stderr.write(f"Error: {prog_name} needs the package {error.name!r}, which is not installed: {_EXTRAS}\n")
        sys.exit(2)
    if interrupted:
        sys.stderr.write("Error: interrupted\n")
        sys.exit(130)
    getattr(cli, command).main(prog_name=prog_name)


def train() -> None:
    """``pyrospn-train``."""
    _run("pyro_spn.train.cli", "train", "pyrospn-train")


def sample() -> None:
    """``pyrospn-sample``."""
    _run("pyro_spn.train.cli", "sample", "pyrospn-sample")


def experiment() -> None:
    """``pyrospn-experiment``."""
    _run("pyro_spn.experiment.cli", "experiment", "pyrospn-experiment")
