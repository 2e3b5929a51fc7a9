"""The console scripts' entry points. They import their command only when run, so that a missing training extra
(click, h5py, torchvision, ...) is one clear line instead of a traceback."""

from __future__ import annotations

import importlib
import sys

_EXTRAS = "pip install 'pyro_spn[train]' (or '[experiment]' for pyrospn-experiment)"


def _run(module: str, command: str, prog_name: str) -> None:
    try:
        cli = importlib.import_module(module)
    except ImportError as error:
        sys.stderr.write(f"Error: {prog_name} needs the package {error.name!r}, which is not installed: {_EXTRAS}\n")
        sys.exit(2)
    except KeyboardInterrupt:
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
