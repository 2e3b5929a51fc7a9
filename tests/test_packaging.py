"""Packaging: the core imports only torch, Pyro and NumPy; the version has one source; the console scripts report a
missing training extra in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

import pyro_spn

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torchvision", "torchmetrics", "h5py", "click", "sklearn", "gdown", "PIL", "matplotlib")  # (Pyro imports tqdm)


def test_the_core_does_not_import_training_or_evaluation_packages():
    code = ("import sys; import pyro_spn, pyro_spn.leaves, pyro_spn.distribution, pyro_spn.joint, pyro_spn.sampling, "
            "pyro_spn.objectives, pyro_spn.temperature, pyro_spn.nets; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyro_spn.__version__ in (ROOT / "CHANGELOG.md").read_text()


def test_the_core_dependencies_are_torch_pyro_and_numpy():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0].split("=")[0] for d in project["dependencies"]] == ["torch", "pyro-ppl", "numpy"]
    assert "pyro_spn[experiment,docs]" in project["optional-dependencies"]["dev"]


def test_a_missing_extra_is_one_line(tmp_path):
    blocker = tmp_path / "click.py"
    blocker.write_text("raise ImportError('No module named click', name='click')\n")
    code = "import sys; sys.argv = ['pyrospn-train']; from pyro_spn.scripts import train; train()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "pip install 'pyro_spn[train]'" in result.stderr
