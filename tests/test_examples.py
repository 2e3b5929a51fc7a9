"""Runs every script in ``examples/`` in smoke mode and checks that it writes a picture.

A new example must be added to ``EXAMPLES`` (``test_every_example_is_listed`` fails otherwise); files
whose names start with ``_`` are helpers, not examples.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

# (file, extra command-line arguments)
EXAMPLES: list[tuple[str, list[str]]] = [
    ("likelihood.py", []),
    ("adversarial.py", []),
    ("mmd.py", []),
    ("mmd.py", ["--kernel", "learned"]),
    ("autoencoding.py", []),
    ("inpainting.py", []),
    ("inpainting.py", ["--side", "left"]),
    ("synthetic_2d.py", []),
    ("temperature_ablation.py", []),
    ("spn_guide.py", []),
    ("spn_prior_vae.py", []),
    ("autospn_ring.py", []),
    ("autospn_ring.py", ["--posterior", "four-modes", "--elbo", "trace"]),
    ("conditional_density.py", []),
    ("vae_spn_encoder.py", []),
]


def _load(name: str):
    path = EXAMPLES_DIR / name
    if not path.exists():
        pytest.skip(f"examples/{name} does not exist yet")
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, extra: list[str], output: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))  # the examples import their helpers from _common
    monkeypatch.chdir(output)  # anything written to a relative path stays in the temporary folder
    module = _load(name)
    module.main([*extra, "--smoke-test", "--output", str(output / "out")])
    return sorted((output / "out").rglob("*.png"))


def test_every_example_is_listed() -> None:
    listed = {name for name, _ in EXAMPLES}
    present = {path.name for path in EXAMPLES_DIR.glob("*.py") if not path.name.startswith("_")}
    unlisted = sorted(present - listed)
    assert not unlisted, f"add these examples to EXAMPLES in {Path(__file__).name}: {unlisted}"


@pytest.mark.parametrize(("name", "extra"), EXAMPLES, ids=[" ".join([n, *e]) for n, e in EXAMPLES])
def test_example_runs_in_smoke_mode(name: str, extra: list[str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pictures = _run(name, extra, tmp_path, monkeypatch)
    assert pictures, f"examples/{name} wrote no PNG"


def test_inpainting_from_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyro_spn.train import TrainConfig, Trainer

    run = tmp_path / "run"
    config = TrainConfig(objective="ll", depth=2, num_repetitions=2, num_sums=4, num_leaves=4, epochs=1,
                         max_batches_per_epoch=2, num_final_samples=10, device="cpu", output=str(run))
    Trainer(config, progress=False).fit()
    pictures = _run("inpainting.py", ["--checkpoint", str(run), "--num-images", "8"], tmp_path, monkeypatch)
    assert [p.name for p in pictures] == ["inpainting.png"]


def test_smoke_mode_follows_ci_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))
    common = _load("_common.py")
    args = common.make_parser("x").parse_args([])
    monkeypatch.delenv("CI", raising=False)
    assert not common.smoke_mode(args)
    monkeypatch.setenv("CI", "true")
    assert common.smoke_mode(args)
    assert common.smoke_mode(common.make_parser("x").parse_args(["--smoke-test"]))
    assert args.output == "runs/examples/x" and args.dataset == "digits"
