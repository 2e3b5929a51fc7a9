"""The README's code runs: every Python block, in order, in one namespace; every CLI line parses."""

import re
from pathlib import Path

import torch
from conftest import shell_commands

from pyro_spn.experiment.cli import experiment
from pyro_spn.train.cli import sample, train

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = {"pyrospn-train": train, "pyrospn-sample": sample, "pyrospn-experiment": experiment}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run() -> None:
    assert blocks("python"), "the README has no Python code block"
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks("python"):
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["completed"].shape == namespace["x"].shape
    assert not torch.isnan(namespace["completed"]).any()


def test_readme_command_lines_parse() -> None:
    lines = [words for block in blocks("bash") for words in shell_commands(block, COMMANDS)]
    assert len(lines) >= 3
    for words in lines:
        COMMANDS[words[0]].make_context(words[0], words[1:]).close()  # click.UsageError for a bad option
