"""No command destroys data it was not asked to replace: a new run refuses a folder that is not empty (unless
``--overwrite``, which removes only the run's own files), a resume checks everything before it touches a file and
removes the temporary files a killed run left, ``pyrospn-sample`` never writes over a run's files or a file it did not
write, and every write of the package goes through :mod:`pyro_spn.atomic`."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner
from conftest import copy_run
from PIL import Image

import pyro_spn
from pyro_spn.train.cli import sample, train

TINY = ["--depth", "2", "--repetitions", "2", "--sums", "2", "--leaves", "2", "--batch-size", "32",
        "--max-batches-per-epoch", "2", "--num-final-samples", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output


def assert_one_line_error(result, match: str = "") -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run of 2 epochs (copied by the tests that change it)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    assert_ok(invoke(train, "--output", folder, *TINY, "--epochs", "2"))
    return folder


# -- a new run in a folder that holds files ----------------------------------------------------------------------
def test_a_folder_with_run_files_but_no_checkpoint_is_refused(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    before = snapshot(run)
    assert_one_line_error(invoke(train, "--output", run, *TINY, "--epochs", "1"), match="--overwrite")
    assert snapshot(run) == before  # metrics.jsonl keeps its 2 records, nothing replaced


def test_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert_one_line_error(invoke(train, "--output", tmp_path / "run", *TINY, "--epochs", "1"), match="notes.txt")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


def test_overwrite_replaces_only_the_runs_files(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "sample.png").write_bytes(b"a picture of pyrospn-sample's")
    assert_ok(invoke(train, "--output", run, *TINY, "--epochs", "1", "--overwrite"))
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (run / "samples_epoch002.png").exists()  # the earlier run's picture is gone, not left stale
    assert (run / "notes.txt").read_text() == "mine" and (run / "sample.png").exists()  # not the run's files
    assert json.loads((run / "config.json").read_text())["overwrite"] is True
    assert_one_line_error(invoke(train, "--output", run, "--resume", "--overwrite"), match="remove --overwrite")
    assert_ok(invoke(train, "--output", run, "--resume", "--epochs", "2", "--no-progress"))  # a resumable run


# -- resume ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epoch", [-1, 0, 3, "2", 1.0], ids=["negative", "zero", "beyond-its-epochs", "text", "float"])
def test_a_checkpoint_with_an_impossible_epoch_touches_no_file(tmp_path, finished_run, epoch):
    run = copy_run(finished_run, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["epoch"] = epoch
    torch.save(state, run / "checkpoint.pt")
    before = snapshot(run)
    line = assert_one_line_error(invoke(train, "--output", run, "--resume", "--epochs", "3", "--no-progress"))
    assert "checkpoint.pt" in line and "epoch" in line
    assert snapshot(run) == before


def test_resume_removes_the_temporary_files_of_a_killed_run(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    stale = [".checkpoint.pt.k1ll3d.tmp", ".samples.h5.abc123.tmp", ".metrics.jsonl.x.tmp",
             ".samples_epoch003.png.y.tmp", ".config.json.z.tmp"]
    for name in [*stale, ".notes.txt.mine.tmp"]:
        (run / name).write_bytes(b"partial")
    assert_ok(invoke(train, "--output", run, "--resume", "--epochs", "3", "--no-progress"))
    assert sorted(p.name for p in run.glob(".*")) == [".notes.txt.mine.tmp"]


# -- pyrospn-sample ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, name", [("--hdf5", "checkpoint.pt"), ("--hdf5", "samples.h5"),
                                          ("--hdf5", "metrics.jsonl"), ("--output", "samples_epoch001.png"),
                                          ("--hdf5", "config.json")])
def test_sample_never_writes_over_a_runs_files(tmp_path, finished_run, option, name):
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    assert_one_line_error(invoke(sample, "--checkpoint", run, option, run / name, "--num-samples", "4"),
                          match=option)
    assert snapshot(run) == before


def test_sample_replaces_only_files_it_wrote(tmp_path, finished_run):
    picture, hdf5 = tmp_path / "mine.png", tmp_path / "mine.h5"
    Image.new("RGB", (4, 4)).save(picture)
    with h5py.File(hdf5, "w") as file:
        file["x"] = [1, 2]
    for option, path in (("--output", picture), ("--hdf5", hdf5)):
        before = path.read_bytes()
        assert_one_line_error(invoke(sample, "--checkpoint", finished_run, option, path), match="not written by")
        assert path.read_bytes() == before
    ours = ["--output", tmp_path / "s.png", "--hdf5", tmp_path / "s.h5", "--num-samples", "4"]
    assert_ok(invoke(sample, "--checkpoint", finished_run, *ours))
    assert_ok(invoke(sample, "--checkpoint", finished_run, *ours))  # its own files: replaced
    assert_one_line_error(invoke(sample, "--checkpoint", finished_run, "--output", tmp_path / "same.png", "--hdf5",
                                 tmp_path / "same.png"), match="same file")


def test_sample_checks_the_picture_name_before_sampling(tmp_path, finished_run, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the output")

    monkeypatch.setattr("pyro_spn.train.sample.SavedRun.load", no_sampling)
    assert_one_line_error(invoke(sample, "--checkpoint", finished_run, "--output", tmp_path / "samples"),
                          match="--output must name a .png file")
    assert not (tmp_path / "samples").exists()


# -- atomic writes -------------------------------------------------------------------------------------------
#: Calls that write or move files: any ``x.name(...)`` for the first set, ``module.name(...)`` for the others.
WRITING_METHODS = {"write_text", "write_bytes", "save", "savefig", "to_csv", "dump"}
WRITING_FUNCTIONS = {("os", "replace"), ("os", "rename"), ("shutil", "copy"), ("shutil", "copyfile"),
                     ("shutil", "move")}


def _writes(tree: ast.AST) -> list[ast.Call]:
    """Calls in ``tree`` that write a file directly: ``open``/``h5py.File`` in a writing mode, the methods of
    :data:`WRITING_METHODS` (``Path.write_text``, ``torch.save``, ``PIL.Image.save``, ...) and the functions of
    :data:`WRITING_FUNCTIONS` (``os.replace``, ...)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        owner = getattr(function.value, "id", "") if isinstance(function, ast.Attribute) else ""
        if owner == "atomic":  # pyro_spn.atomic's own functions
            continue
        modes = [a.value for a in [*node.args[1:2], *(k.value for k in node.keywords if k.arg == "mode")]
                 if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if (name in WRITING_METHODS or (owner, name) in WRITING_FUNCTIONS
                or name in ("open", "File") and any(set(mode) & set("wax+") for mode in modes)):
            found.append(node)
    return found


def test_every_write_of_the_package_is_atomic():
    """Outside :mod:`pyro_spn.atomic`, a file is written only inside a function handed to
    ``atomic.write_atomically`` (a ``lambda`` or a local ``def write``): config.json, metrics, pictures, checkpoints,
    HDF5 files, results, eval files, feature and data caches, the native library."""
    package = Path(pyro_spn.__file__).parent
    direct = []
    for source in sorted(package.rglob("*.py")):
        if source.name == "atomic.py":
            continue
        tree = ast.parse(source.read_text())
        allowed = {id(call) for node in ast.walk(tree)
                   if isinstance(node, ast.Lambda) or isinstance(node, ast.FunctionDef) and node.name == "write"
                   for call in _writes(node)}
        direct += [f"{source.relative_to(package)}:{call.lineno}" for call in _writes(tree) if id(call) not in allowed]
    assert direct == [], f"writes that bypass pyro_spn.atomic: {direct}"
