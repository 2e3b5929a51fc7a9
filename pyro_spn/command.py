"""Shared plumbing of the command lines (click): one-line errors and warnings, exit codes, option types.

Every command reports a bad option value, a missing or corrupt file or missing data as one line ``Error: ...`` on
stderr with exit code 2 (never a traceback or a usage block), a non-finite training loss with exit code 1, and an
interruption with exit code 130; a warning is one line ``Warning: ...``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn, TextIO

import click

from .data import DatasetNotFoundError
from .train import NonFiniteLossError

#: The library's errors a command reports as one line.
HANDLED: tuple[type[BaseException], ...] = (NonFiniteLossError, DatasetNotFoundError, ValueError, TypeError, OSError)
#: The context settings every command shares.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses NaN and infinities."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


#: Option types the commands share.
POSITIVE_INT = click.IntRange(min=1)
POSITIVE = FiniteFloatRange(min=0, min_open=True)
NON_NEGATIVE = FiniteFloatRange(min=0)
SEED = click.IntRange(0, 2**63 - 1)


class Failure(click.ClickException):
    """A failure reported as one line, with the given exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


class OneLineErrors(click.Command):
    """A command whose errors (usage errors included) are one line ``Error: ...`` on stderr, never a traceback or a
    usage block; an interruption exits with code 130, whatever error it surfaces as (an error raised from C code
    or a worker process after a SIGINT too); warnings are one line each."""

    def main(self, args: Any = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> None:
        with _recording_interruptions() as interruptions:
            try:
                with warnings.catch_warnings():
                    warnings.showwarning = _show_warning
                    result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.ClickException as error:
                if interruptions and error.exit_code != 130:
                    _exit("interrupted", 130)
                _exit(error.format_message(), error.exit_code)
            except (click.Abort, KeyboardInterrupt):
                _exit("interrupted", 130)
            except Exception:
                if not interruptions:
                    raise
                _exit("interrupted", 130)
        sys.exit(result if isinstance(result, int) else 0)


def _exit(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def _recording_interruptions() -> Iterator[list[int]]:
    """Within the block, a SIGINT raises ``KeyboardInterrupt`` as usual and is also recorded in the yielded list
    (where Python's own handler is installed, in the main thread; elsewhere nothing is recorded)."""
    interruptions: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield interruptions
        return

    def record(signum: int, frame: FrameType | None) -> None:
        interruptions.append(signum)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, record)
    try:
        yield interruptions
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Shows a warning as one line ``Warning: ...`` on stderr."""
    click.echo(f"Warning: {' '.join(str(message).split())}", err=True)


def failure(error: BaseException) -> Failure:
    """The one-line report of an error raised by the library."""
    if isinstance(error, NonFiniteLossError):
        return Failure(str(error), exit_code=1)
    return Failure(" ".join(str(error).split()) or type(error).__name__)


def interrupted(advice: str) -> Failure:
    """The report of an interruption (exit code 130), with what to do next."""
    return Failure(f"interrupted; {advice}", exit_code=130)
