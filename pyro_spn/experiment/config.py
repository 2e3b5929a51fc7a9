"""The experiment's configuration: the grid, the seeds and the shared training options (:class:`ExperimentConfig`,
saved as ``OUTPUT/experiment.json``), and one run of the protocol (:class:`RunSpec`)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import checks
from ..data import DATASETS, IMAGE_DATASETS, event_shape_of
from ..train import TrainConfig
from .methods import METHODS, Method, get_method

#: FID / KID feature extractors: a classifier trained on the data set (offline), or Inception-v3 from local weights.
FEATURES: tuple[str, ...] = ("classifier", "inception")
# TrainConfig fields the protocol sets itself; the rest may be given in ExperimentConfig.train.
PROTOCOL_FIELDS = ("objective", "model", "dataset", "lr", "batch_size", "seed", "epochs", "output", "resume",
                   "overwrite", "pretrain_epochs", "nll_weight")
#: The most training runs an experiment may plan (grid and test runs).
MAX_RUNS = 10_000
# Fields a rerun in the same folder may change (output: the same folder spelled another way, "e" or "./e").
RERUN_CHANGES = ("jobs", "progress", "output")


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
            checks.positive("lrs", lr)
        _non_empty("batch_sizes", self.batch_sizes)
        for name in ("seeds", "epochs", "num_samples", "classifier_epochs", "jobs"):
            checks.integer(name, getattr(self, name))
        for dataset in self.datasets:
            checks.sample_count("num_samples", self.num_samples, math.prod(event_shape_of(dataset)))
        for size in self.batch_sizes:
            checks.integer("batch_sizes", size)
        checks.non_negative("nll_weight", self.nll_weight)
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
        runs = len(self.plan_grid()) + len(self.pairs()) * self.seeds
        if runs > MAX_RUNS:
            raise ValueError(f"seeds, lrs, batch_sizes, datasets, methods: the experiment would train {runs} runs, "
                             f"more than the {MAX_RUNS} allowed")
        for spec in self.plan_grid():
            spec.train_config(self).validate()
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        """The experiment :meth:`to_json` saved; ``ValueError`` for malformed JSON, a value that is not an object,
        unknown fields or a missing ``output`` (other missing fields take their defaults; the values are not
        validated: see :meth:`validate`)."""
        values = checks.json_object(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fields {unknown}; accepted: {sorted(known)}")
        if "output" not in values:
            raise ValueError("the field 'output' is missing")
        for name in ("datasets", "methods", "lrs", "batch_sizes"):
            if isinstance(values.get(name), list):
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


def _non_empty(name: str, values: Any) -> None:
    if not isinstance(values, tuple | list):
        raise TypeError(f"{name} must be a non-empty list, got {values!r}")
    if len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list, got {values!r}")


def check_same(saved: ExperimentConfig, config: ExperimentConfig) -> None:
    """``ValueError`` naming the fields in which ``config`` differs from the folder's saved experiment."""
    changed = [f.name for f in dataclasses.fields(ExperimentConfig)
               if f.name not in RERUN_CHANGES and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        raise ValueError(f"output {config.output} holds an experiment with other settings ({', '.join(changed)}); "
                         f"rerun it with the same settings to continue, or choose another output")

