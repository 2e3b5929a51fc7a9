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

Runs already evaluated are skipped and interrupted runs resume from their last checkpoint, so rerunning the
same command after an interruption continues the protocol.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data import DATASETS, IMAGE_DATASETS
from ..train import NonFiniteLossError, TrainConfig, Trainer
from .class_conditional_run import evaluate_class_conditional, is_trained, train_class_conditional
from .evaluation import FEATURES, evaluate_run, feature_extractor, write_json
from .figures import write_figures
from .methods import METHODS, Method, get_method
from .report import select, write_results

# TrainConfig fields the protocol sets itself; the rest may be given in ExperimentConfig.train.
PROTOCOL_FIELDS = ("objective", "model", "dataset", "lr", "batch_size", "seed", "epochs", "output", "resume",
                   "pretrain_epochs", "nll_weight")
# Fields a rerun in the same folder may change.
RERUN_CHANGES = ("jobs", "progress")


@dataclass
class ExperimentConfig:
    """An experiment: the grid, the seeds, and the training options shared by every run.

    Attributes:
        output: the experiment folder.
        datasets: data sets (names of ``pyro_spn.data.DATASETS``).
        methods: methods (names of :data:`~pyro_spn.experiment.methods.METHODS`); image-only methods are
            skipped on 2-D sets.
        lrs: learning rates of the grid.
        batch_sizes: batch sizes of the grid.
        seeds: seeds of the test phase (``0 .. seeds-1``; the grid runs use seed 0).
        epochs: epochs of every run.
        nll_weight: ``λ`` of the ``+nll`` hybrid methods.
        num_samples: samples drawn per evaluation (FID / KID, MMD², mode coverage).
        features: ``"classifier"`` (a CNN trained on the data set, offline) or ``"inception"``.
        classifier_epochs: training epochs of the classifiers the evaluation trains: the ``"classifier"`` features
            and the classifier-on-samples of ``ll-class``.
        inception_weights: the local Inception-v3 weights file for ``features="inception"``.
        train: further ``TrainConfig`` fields for every run (e.g. ``{"num_sums": 10, "data_root": "data"}``).
        jobs: runs trained at once, in worker processes (``1``: in this process).
        progress: show a progress bar over runs (only on a terminal).
    """

    output: str
    datasets: tuple[str, ...] = ("digits",)
    methods: tuple[str, ...] = ("ll", "adv", "mmd", "pae", "vae", "gan", "mmd-gan")
    lrs: tuple[float, ...] = (0.01, 0.001)
    batch_sizes: tuple[int, ...] = (64, 128)
    seeds: int = 5
    epochs: int = 10
    nll_weight: float = 0.01
    num_samples: int = 1000
    features: str = "classifier"
    classifier_epochs: int = 15
    inception_weights: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    jobs: int = 1
    progress: bool = True

    def validate(self) -> ExperimentConfig:
        """Raises ``ValueError`` naming the first bad field and its accepted values; returns ``self``."""
        _non_empty("datasets", self.datasets)
        for name in self.datasets:
            if name not in DATASETS:
                raise ValueError(f"datasets: unknown data set {name!r}; accepted: {', '.join(DATASETS)}")
        _non_empty("methods", self.methods)
        for name in self.methods:
            get_method(name)
        _non_empty("lrs", self.lrs)
        for lr in self.lrs:
            if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
                raise ValueError(f"lrs must be finite numbers > 0, got {lr!r}")
        _non_empty("batch_sizes", self.batch_sizes)
        for name in ("seeds", "epochs", "num_samples", "classifier_epochs", "jobs"):
            _positive_int(name, getattr(self, name))
        for size in self.batch_sizes:
            _positive_int("batch_sizes", size)
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}; got {self.features!r}")
        weights = self.inception_weights
        if self.features == "inception" and (weights is None or not Path(weights).is_file()):
            raise ValueError(f"inception_weights: features 'inception' needs a local Inception-v3 weights file, got "
                             f"{self.inception_weights!r}")
        if not isinstance(self.train, dict):
            raise ValueError(f"train must be a dict of TrainConfig fields, got {type(self.train).__name__}")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        for name in self.train:
            if name in PROTOCOL_FIELDS or name not in known:
                accepted = sorted(known - set(PROTOCOL_FIELDS))
                raise ValueError(f"train: {name!r} cannot be set per experiment; accepted: {', '.join(accepted)}")
        if not self.plan_grid():
            raise ValueError("methods: no method runs on these data sets (pae runs on image data sets only)")
        for spec in self.plan_grid():
            spec.train_config(self).validate()
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        values = json.loads(text)
        for name in ("datasets", "methods", "lrs", "batch_sizes"):
            values[name] = tuple(values[name])
        return cls(**values)

    @property
    def root(self) -> Path:
        return Path(self.output)

    def pairs(self) -> list[tuple[str, Method]]:
        """The (data set, method) pairs that run: image-only methods only on image data sets."""
        return [(dataset, METHODS[name]) for dataset in self.datasets for name in self.methods
                if dataset in IMAGE_DATASETS or not METHODS[name].images_only]

    def plan_grid(self) -> list[RunSpec]:
        """The grid runs: every pair × learning rate × batch size, seed 0."""
        return [RunSpec(dataset, method.name, lr, batch_size, 0) for dataset, method in self.pairs()
                for lr in self.lrs for batch_size in self.batch_sizes]


@dataclass(frozen=True)
class RunSpec:
    """One training run of the protocol."""

    dataset: str
    method: str
    lr: float
    batch_size: int
    seed: int

    def folder(self, experiment: ExperimentConfig) -> Path:
        """``OUTPUT/runs/<dataset>/<method>/lr<lr>-bs<batch_size>-seed<seed>``."""
        name = f"lr{self.lr:g}-bs{self.batch_size}-seed{self.seed}"
        return experiment.root / "runs" / self.dataset / self.method / name

    def train_config(self, experiment: ExperimentConfig) -> TrainConfig:
        """The run's ``TrainConfig``."""
        method = get_method(self.method)
        options = {**experiment.train, **method.train_options(experiment.epochs, experiment.nll_weight)}
        return TrainConfig(dataset=self.dataset, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                           epochs=experiment.epochs, output=str(self.folder(experiment)), **options)

    def row(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "method": self.method, "lr": self.lr, "batch_size": self.batch_size,
                "seed": self.seed}


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
    folder = Path(task.config.output)
    conditional = get_method(task.spec.method).class_conditional
    error = None
    try:
        if conditional and not is_trained(folder):
            train_class_conditional(task.config)
        elif not conditional and not (folder / "samples.h5").is_file():
            resume = (folder / "checkpoint.pt").is_file()
            Trainer(dataclasses.replace(task.config, resume=resume), progress=False).fit()
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
        elif conditional:
            result = {"error": None, **evaluate_class_conditional(
                task.config, split, features=features, num_samples=task.num_samples, epochs=task.classifier_epochs)}
        else:
            result = {"error": None, **evaluate_run(folder, split, features=features, num_samples=task.num_samples,
                                                    device=task.config.device)}
        write_json(folder / f"eval-{split}.json", result)
        rows.append({**task.spec.row(), "split": split, **result})
    return rows


class Experiment:
    """Runs an :class:`ExperimentConfig`'s protocol in its folder (see the module docstring).

    Raises:
        ValueError: an invalid config, or a folder holding an experiment with another config.
    """

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config.validate()
        self.root = config.root
        saved = self.root / "experiment.json"
        if saved.is_file():
            _check_same(ExperimentConfig.from_json(saved.read_text()), config)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(saved, json.loads(config.to_json()))

    # -- phases ---------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """The whole protocol: features, grid, selection, test runs. Returns every result row (also written
        to ``results.csv`` with ``summary.md`` and the figures)."""
        self.prepare_features()
        grid_rows = self.execute([self._task(spec, ("val",)) for spec in self.config.plan_grid()], "grid search")
        selected = select(grid_rows, self.config)
        test_specs = [RunSpec(dataset, method, lr, batch_size, seed)
                      for (dataset, method), (lr, batch_size) in selected.items() for seed in range(self.config.seeds)]
        test_rows = self.execute([self._task(spec, ("test",)) for spec in test_specs], "test runs")
        rows = grid_rows + test_rows
        write_results(self.root, rows, selected, self.config)
        write_figures(self.root, selected, self.config)
        return rows

    def prepare_features(self) -> None:
        """Trains (or loads) the feature extractor of every image data set before the runs need it."""
        for dataset in self.config.datasets:
            if dataset in IMAGE_DATASETS and self.config.features == "classifier":
                feature_extractor("classifier", dataset, self._features_cache(dataset),
                                  data_root=self.config.train.get("data_root", "data"),
                                  epochs=self.config.classifier_epochs)

    def execute(self, tasks: Sequence[Task], description: str) -> list[dict[str, Any]]:
        """Executes ``tasks`` (``jobs`` at a time) with a progress bar; rows of runs evaluated before are read
        back from their ``eval-<split>.json`` without running anything."""
        rows: list[dict[str, Any]] = []
        pending = []
        for task in tasks:
            done = [self._read_row(task, split) for split in task.splits]
            if all(row is not None for row in done):
                rows.extend(done)
            else:
                pending.append(task)
        bar = tqdm(total=len(tasks), initial=len(tasks) - len(pending), desc=description, unit="run",
                   disable=not (self.config.progress and _is_terminal()))
        try:
            for task_rows in _map(execute, pending, self.config.jobs):
                rows.extend(task_rows)
                bar.update()
                bar.set_postfix_str(f"{task_rows[0]['dataset']}/{task_rows[0]['method']}")
        finally:
            bar.close()
        return rows

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

    @staticmethod
    def _read_row(task: Task, split: str) -> dict[str, Any] | None:
        path = Path(task.config.output) / f"eval-{split}.json"
        if not path.is_file():
            return None
        return {**task.spec.row(), "split": split, **json.loads(path.read_text())}


def _map(function: Callable[[Task], list[dict[str, Any]]], tasks: Sequence[Task], jobs: int
         ) -> Iterable[list[dict[str, Any]]]:
    """``function`` over ``tasks``, in this process for ``jobs == 1``, else in ``jobs`` spawned worker
    processes; results in completion order. An interruption cancels the tasks not started."""
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            yield function(task)
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures: set[Future] = {pool.submit(function, task) for task in tasks}
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _is_terminal() -> bool:
    return sys.stderr.isatty()


def _non_empty(name: str, values: Sequence[Any]) -> None:
    if not isinstance(values, tuple | list) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list, got {values!r}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_same(saved: ExperimentConfig, config: ExperimentConfig) -> None:
    """``ValueError`` naming the fields in which ``config`` differs from the folder's saved experiment."""
    changed = [f.name for f in dataclasses.fields(ExperimentConfig)
               if f.name not in RERUN_CHANGES and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        raise ValueError(f"output {config.output} holds an experiment with other settings ({', '.join(changed)}); "
                         f"rerun it with the same settings to continue, or choose another output")

