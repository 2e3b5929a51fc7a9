"""Checkpoint files: written atomically, read with ``torch.load(..., weights_only=True)``, RNG states included.

A checkpoint is a plain dict of tensors, dicts, lists, numbers and strings (no pickled objects), so
loading one executes no code from the file. :func:`rng_state` / :func:`set_rng_state` capture and restore
every random number generator the training loop draws from, so a resumed run continues bit-identically.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .. import atomic

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint file is missing the expected content, corrupt, or not a checkpoint at all."""


def checkpoint_path(run: str | os.PathLike) -> Path:
    """The checkpoint of a run: ``run`` itself if it is a file, else ``run/checkpoint.pt``."""
    path = Path(run)
    return path if path.is_file() else path / CHECKPOINT_NAME


def rng_state(cuda: bool) -> dict[str, Any]:
    """The states of torch's CPU generator, the CUDA generators (if ``cuda``) and Python's ``random``."""
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Writes ``state`` to ``path`` atomically (:mod:`pyro_spn.atomic`), so the previous checkpoint stays intact
    until the new one is complete."""
    atomic.write_atomically(path, lambda temp: torch.save({"format_version": FORMAT_VERSION, **state}, temp))


@contextmanager
def checkpoint_content(path: Path) -> Iterator[None]:
    """Reports content of the checkpoint ``path`` that does not fit (missing or malformed entries, tensors of
    other shapes) as a :class:`CheckpointError` naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{path} does not fit ({type(error).__name__}: {reason})") from None


def load_weights(path: Path, what: str) -> Any:
    """Reads a file of tensors on the CPU with ``weights_only=True`` (no code runs); a :class:`CheckpointError`
    naming the file as a ``what`` (e.g. ``"checkpoint"``) if it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path} is not a readable {what} ({type(error).__name__}: {reason})") from None


def load_checkpoint(path: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Reads a checkpoint on the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is unreadable, not a checkpoint, of another format version, or lacks
            one of ``keys``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_weights(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a pyro_spn checkpoint of format version {FORMAT_VERSION}")
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return state
