"""The experiment protocol of the paper (§4.2, Appendix A): a grid search over learning rates × batch sizes
on the validation split, then the selected setting of every (data set, method) over several seeds on the
test split.

Folder ``OUTPUT``::

    experiment.json                     the ExperimentConfig (a rerun must match it: it resumes)
    features/<dataset>.pt               the FID / KID classifier of each image data set (trained once)
    runs/<dataset>/<method>/lr<lr>-bs<bs>-seed<seed>/
                                        a pyrospn-train run folder, plus eval-val.json / eval-test.json
    results.csv                         one row per evaluated run and split
    summary.md                          selected settings and mean ± std tables (written by report.py)
    samples.png, densities.png          the figures (written by figures.py)

Runs already evaluated are skipped and interrupted runs resume from their last checkpoint (a run killed before its
first checkpoint starts again: its files are replaced), so rerunning the same command after an interruption
continues the protocol; the temporary files a killed process left are removed.

Under ``torchrun`` (``pyrospn-experiment`` started on every rank of a job, :func:`pyro_spn.train.distributed.start`)
each rank is a worker on the same folder (a file system all ranks share): the runs of a phase are dealt out by their
place in the phase's list (run ``i`` to rank ``i mod world size``), so each is trained and evaluated exactly once;
the ranks meet after each phase, and rank 0 alone writes ``experiment.json``, the feature extractors, the results
and the figures.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from .. import atomic
from ..data import IMAGE_DATASETS
from ..train import NonFiniteLossError, TrainConfig, Trainer
from ..train.distributed import SINGLE, World, barrier, decide_on_main
from .config import ExperimentConfig, RunSpec, check_same
from .evaluation import evaluate_run, feature_extractor
from .figures import write_figures
from .report import select, write_results

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class Task:
    """A run to train (if it is not yet) and the splits to evaluate it on (those not evaluated yet)."""

    spec: RunSpec
    config: TrainConfig
    splits: tuple[str, ...]
    features_cache: str | None
    classifier_epochs: int
    features: str
    inception_weights: str | None
    num_samples: int
    threads: int


def execute(task: Task) -> list[dict[str, Any]]:
    """Trains the task's run (resuming from its checkpoint if it has one) and evaluates it on each split
    not evaluated yet; returns one row per split (``error`` set, metrics absent, if training failed)."""
    torch.set_num_threads(task.threads)
    assert task.config.output is not None
    folder = Path(task.config.output)
    error = None
    for split in task.splits:
        atomic.remove_stale_temporaries(folder / f"eval-{split}.json")
    try:
        if not (folder / "samples.h5").is_file():
            resume = (folder / "checkpoint.pt").is_file()
            Trainer(dataclasses.replace(task.config, resume=resume, overwrite=not resume), progress=False).fit()
    except NonFiniteLossError as failure:
        error = str(failure)
    features = None
    if error is None and task.features_cache is not None:
        features = feature_extractor(task.features, task.spec.dataset, Path(task.features_cache),
                                     data_root=task.config.data_root, inception_weights=task.inception_weights)
    rows = []
    for split in task.splits:
        if error is not None:
            result: dict[str, Any] = {"error": error}
        else:
            result = {"error": None, **evaluate_run(folder, split, features=features, num_samples=task.num_samples,
                                                    classifier_epochs=task.classifier_epochs,
                                                    device=task.config.device)}
        atomic.write_json(folder / f"eval-{split}.json", result)
        rows.append({**task.spec.row(), "split": split, **result})
    return rows


class Experiment:
    """Runs an :class:`ExperimentConfig`'s protocol in its folder (see the module docstring).

    Args:
        config: the experiment.
        world: the ranks of a ``torchrun`` job sharing the experiment's runs (see the module docstring); one
            process by default.

    Raises:
        ValueError: an invalid config, or a folder holding an experiment with another config.
    """

    def __init__(self, config: ExperimentConfig, world: World = SINGLE) -> None:
        self.config = config.validate()
        self.root = config.root
        self.world = world
        decide_on_main(world, self._prepare_folder)

    def _prepare_folder(self) -> None:
        """Checks the folder's experiment against the config, removes stale temporary files, writes the config."""
        saved = self.root / "experiment.json"
        if saved.is_file():
            check_same(_read(saved, ExperimentConfig.from_json), self.config)
        self.root.mkdir(parents=True, exist_ok=True)
        for name in (saved.name, "results.csv", "summary.md", "samples.png", "densities.png", "features/*.pt"):
            atomic.remove_stale_temporaries(self.root / name)
        atomic.write_json(saved, json.loads(self.config.to_json()))

    # -- phases ---------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """The whole protocol: features, grid, selection, test runs. Returns every result row (also written
        to ``results.csv`` with ``summary.md`` and the figures)."""
        decide_on_main(self.world, self.prepare_features)
        grid_rows = self.execute([self._task(spec, ("val",)) for spec in self.config.plan_grid()], "grid search")
        selected = select(grid_rows, self.config)
        test_specs = [RunSpec(dataset, method, lr, batch_size, seed)
                      for (dataset, method), (lr, batch_size) in selected.items() for seed in range(self.config.seeds)]
        test_rows = self.execute([self._task(spec, ("test",)) for spec in test_specs], "test runs")
        rows = grid_rows + test_rows
        if self.world.is_main:
            write_results(self.root, rows, selected, self.config)
            write_figures(self.root, selected, self.config)
        return rows

    def prepare_features(self) -> None:
        """Trains (or loads) the feature extractor of every image data set before the runs need it."""
        for dataset in self.config.datasets:
            if dataset in IMAGE_DATASETS and self.config.features == "classifier":
                feature_extractor("classifier", dataset, self._features_cache(dataset),
                                  data_root=self.config.train.get("data_root"),
                                  epochs=self.config.classifier_epochs)

    def execute(self, tasks: Sequence[Task], description: str) -> list[dict[str, Any]]:
        """Executes ``tasks`` (``jobs`` at a time) with a progress bar; rows of runs evaluated before are read
        back from their ``eval-<split>.json`` without running anything. Under ``torchrun`` this rank executes its
        share of ``tasks`` (:func:`share`), waits for the other ranks, and returns the rows of all of them."""
        world = self.world
        mine = share(tasks, world)
        rows: list[dict[str, Any]] = []
        pending = []
        for task in mine:
            done = [row for split in task.splits if (row := self._read_row(task, split)) is not None]
            if len(done) == len(task.splits):
                rows.extend(done)
            else:
                pending.append(task)
        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=description, unit="run",
                   disable=not (self.config.progress and world.is_main and _is_terminal()))
        try:
            for task_rows in _map(execute, pending, self.config.jobs):
                rows.extend(task_rows)
                bar.update()
                bar.set_postfix_str(f"{task_rows[0]['dataset']}/{task_rows[0]['method']}")
        finally:
            bar.close()
        if not world.distributed:
            return rows
        barrier(world, f"waiting for the other ranks' {description}")
        return [self._finished_row(task, split) for task in tasks for split in task.splits]

    # -- helpers --------------------------------------------------------------------------------------
    def _features_cache(self, dataset: str) -> Path:
        return self.root / "features" / f"{dataset}.pt"

    def _task(self, spec: RunSpec, splits: tuple[str, ...]) -> Task:
        image = spec.dataset in IMAGE_DATASETS
        cache = str(self._features_cache(spec.dataset)) if image else None
        threads = max(1, torch.get_num_threads() // self.config.jobs)
        return Task(spec, spec.train_config(self.config), splits, cache, self.config.classifier_epochs,
                    self.config.features,
                    self.config.inception_weights, self.config.num_samples, threads)

    def _finished_row(self, task: Task, split: str) -> dict[str, Any]:
        """The row of a task some rank has finished; ``ValueError`` if its evaluation is missing (a folder the ranks
        do not share)."""
        row = self._read_row(task, split)
        if row is None:
            raise ValueError(f"{task.config.run_dir / f'eval-{split}.json'} is missing after every rank finished its "
                             f"runs: the ranks must share the output folder")
        return row

    @staticmethod
    def _read_row(task: Task, split: str) -> dict[str, Any] | None:
        path = task.config.run_dir / f"eval-{split}.json"
        if not path.is_file():
            return None
        return {**task.spec.row(), "split": split, **_read(path, _evaluation)}


def share(tasks: Sequence[_T], world: World) -> list[_T]:
    """This rank's tasks: those at places ``i`` with ``i mod world.size == world.rank`` (every task goes to exactly
    one rank, whichever tasks are finished already)."""
    return [task for number, task in enumerate(tasks) if number % world.size == world.rank]


def _read(path: Path, parse: Callable[[str], _T]) -> _T:
    """``parse`` of the text of ``path``; its ``ValueError`` (or a file that is not text) names the file."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except ValueError as error:  # UnicodeDecodeError and json.JSONDecodeError included
        raise ValueError(f"{path} is damaged: {error}; delete or restore it") from None


def _evaluation(text: str) -> dict[str, Any]:
    """The metrics of an ``eval-<split>.json`` file."""
    result = json.loads(text)
    if not isinstance(result, dict):
        raise ValueError(f"expected a JSON object, got {type(result).__name__}")
    return result


def _map(function: Callable[[Task], list[dict[str, Any]]], tasks: Sequence[Task], jobs: int
         ) -> Iterable[list[dict[str, Any]]]:
    """``function`` over ``tasks``, in this process for ``jobs == 1``, else in ``jobs`` spawned worker
    processes; results in completion order. An interruption cancels the tasks not started."""
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            yield function(task)
        return
    # A worker ignores interruptions while it starts (torch's initialization cannot be interrupted safely), then
    # takes them as usual while it runs a task.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=signal.signal,
                             initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        futures: set[Future] = {pool.submit(_interruptible, function, task) for task in tasks}
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        except BrokenProcessPool as error:
            raise ChildProcessError(f"a worker process died ({error}); rerun the same command to continue") from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _interruptible(function: Callable[[Task], _R], task: Task) -> _R:
    """``function(task)`` in a worker process, with interruptions (SIGINT) raising ``KeyboardInterrupt`` again."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return function(task)


def _is_terminal() -> bool:
    return sys.stderr.isatty()
