"""The documentation: every Python block of ``docs/`` runs, every command line in it parses against the real
click commands (the quickstart's smoke run is executed), and ``sphinx-build -W`` builds it warning-free."""

from __future__ import annotations

import importlib.util
import pkgutil
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import shell_commands

import pyro_spn
from pyro_spn.experiment.cli import experiment
from pyro_spn.train.cli import sample, train

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p for p in DOCS.iterdir() if p.suffix in (".md", ".rst"))
COMMANDS = {"pyrospn-train": train, "pyrospn-sample": sample, "pyrospn-experiment": experiment}

_MD_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
_RST_BLOCK = re.compile(r"^( *)\.\. code-block:: (\w+)\n((?:\1 +:[^\n]*\n)*)\n((?:(?:\1 +[^\n]*)?\n)+)", re.M)


def code_blocks(page: Path, language: str) -> list[str]:
    """The code blocks of ``language`` in a Markdown (```` ```python ````) or reStructuredText
    (``.. code-block:: python``) page, in order."""
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".md":
        return [body for lang, body in _MD_FENCE.findall(text) if lang == language]
    blocks = []
    for match in _RST_BLOCK.finditer(text):
        if match.group(2) == language:
            lines = match.group(4).splitlines()
            indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
            blocks.append("\n".join(line[indent:] for line in lines) + "\n")
    return blocks


def command_lines(page: Path) -> list[list[str]]:
    """The ``pyrospn-*`` command lines of the page's shell blocks (:func:`conftest.shell_commands`)."""
    return [words for block in code_blocks(page, "bash") + code_blocks(page, "console")
            for words in shell_commands(block, COMMANDS)]


def test_the_docs_have_code() -> None:
    names = {p.name for p in PAGES}
    assert {"index.md", "installation.md", "quickstart.md", "concepts.md", "objectives.md", "pyro.md",
            "cli.rst", "api.rst", "performance.md", "experiments.md", "results.md"} <= names
    assert sum(len(code_blocks(p, "python")) for p in PAGES) >= 20
    assert len(command_lines(DOCS / "quickstart.md")) >= 3


@pytest.mark.parametrize("page", [p for p in PAGES if code_blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's Python blocks run in order in one namespace, as a reader would paste them."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(code_blocks(page, "python"), start=1):
        code = compile(block, f"{page.name}, python block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples


@pytest.mark.parametrize("page", [p for p in PAGES if command_lines(p)], ids=lambda p: p.name)
def test_command_lines_parse(page: Path) -> None:
    """Every ``pyrospn-train`` / ``pyrospn-sample`` line of the docs is accepted by the real command."""
    for words in command_lines(page):
        command = COMMANDS[words[0]]
        context = command.make_context(words[0], words[1:])  # raises click.UsageError for a bad option
        context.close()


def test_quickstart_smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quickstart's first shell block (a smoke run, then sampling and inpainting) runs as written."""
    monkeypatch.chdir(tmp_path)
    first_block = code_blocks(DOCS / "quickstart.md", "bash")[0]
    runner = CliRunner()
    for line in first_block.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        result = runner.invoke(COMMANDS[words[0]], words[1:], prog_name=words[0])
        assert result.exit_code == 0, (line, result.output)
    run = tmp_path / "runs" / "quick"
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl", "samples.h5", "sample.png", "inpainted.png"):
        assert (run / name).is_file(), name


def test_every_public_module_is_in_the_api_reference() -> None:
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    modules = ["pyro_spn", "pyro_spn.nets.baselines"] + [f"pyro_spn.{m.name}" for m in pkgutil.iter_modules(
        pyro_spn.__path__) if not m.name.startswith("_")]
    modules += [f"pyro_spn.{package}.{m.name}" for package in ("leaves", "sampling")
                for m in pkgutil.iter_modules([str(Path(pyro_spn.__file__).parent / package)])]
    for module in modules:
        assert f".. automodule:: {module}\n" in text, module
    cli = (DOCS / "cli.rst").read_text(encoding="utf-8")
    for command in ("pyro_spn.train.cli:train", "pyro_spn.train.cli:sample", "pyro_spn.experiment.cli:experiment"):
        assert f".. click:: {command}" in cli, command


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_make_figures(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.draw(tmp_path / "top_down.png")
    assert (tmp_path / "top_down.png").stat().st_size > 10_000
    assert (DOCS / "images" / "top_down.png").is_file()


_SPHINX = all(importlib.util.find_spec(name) is not None for name in ("sphinx", "myst_parser", "sphinx_click"))


@pytest.mark.skipif(not _SPHINX, reason="the docs extra (sphinx, myst-parser, sphinx-click) is not installed")
def test_sphinx_build_is_warning_free(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    for page in ("index", "quickstart", "concepts", "objectives", "pyro", "cli", "api", "performance", "experiments",
                 "results"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_make_frontier(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_frontier", DOCS / "make_frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    header = "dataset,method,split,error,nll,fid\n"
    rows = ["digits,ll,test,,124,40", "digits,ll,test,,126,44", "digits,a,test,,123,38", "digits,b,test,,130,50",
            "digits,c,test,,140,30", "digits,a,val,,1,1", "digits,d,test,boom,1,1", "2-moons,e,test,,1,"]
    (tmp_path / "results.csv").write_text(header + "\n".join(rows) + "\n")
    points = module.method_points(list(__import__("csv").DictReader((tmp_path / "results.csv").open())), "digits")
    assert sorted(points) == ["a", "b", "c", "ll"] and points["ll"][0] == 125 and points["ll"][2] == 42
    assert module.frontier(points) == ["a", "c"]  # ll and b are beaten on both by a
    module.draw(tmp_path / "results.csv", tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="no test rows"):
        module.draw(tmp_path / "results.csv", tmp_path / "none.png", dataset="mnist")
