"""Shared plumbing of the command lines (click): one-line errors and exit codes.

Every command reports a bad option value, a missing or corrupt file or missing data as one line ``Error: ...`` on
stderr with exit code 2 (never a traceback or a usage block), a non-finite training loss with exit code 1, and an
interruption with exit code 130.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .data import DatasetNotFoundError
from .train import NonFiniteLossError

#: The library's errors a command reports as one line.
HANDLED: tuple[type[BaseException], ...] = (NonFiniteLossError, DatasetNotFoundError, ValueError, TypeError, OSError)
#: The context settings every command shares.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class Failure(click.ClickException):
    """A failure reported as one line, with the given exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


class OneLineErrors(click.Command):
    """A command whose errors (usage errors included) are one line ``Error: ...`` on stderr, never a traceback or a
    usage block; an interruption, even during start-up, exits with code 130."""

    def main(self, args: Any = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> None:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as error:
            click.echo(f"Error: {' '.join(error.format_message().split())}", err=True)
            sys.exit(error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Error: interrupted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


def failure(error: BaseException) -> Failure:
    """The one-line report of an error raised by the library."""
    if isinstance(error, NonFiniteLossError):
        return Failure(str(error), exit_code=1)
    return Failure(" ".join(str(error).split()) or type(error).__name__)


def interrupted(advice: str) -> Failure:
    """The report of an interruption (exit code 130), with what to do next."""
    return Failure(f"interrupted; {advice}", exit_code=130)
