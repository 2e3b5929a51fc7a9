"""``Trainer``: the training loop of one run, with validation, pictures, metrics, checkpoints and resume.

Run folder::

    RUN/config.json             the TrainConfig
    RUN/metrics.jsonl           one JSON line per epoch: epoch, phase ("pretrain" or "train"), train_loss and
                                temperature (means over the epoch's batches), the objective's own metrics
                                (e.g. d_real, d_fake), val_nll (nats per example; null for a model without
                                a likelihood), seconds (training and validation)
    RUN/samples_epoch001.png    samples (images) or the density with samples and data (2-D), per epoch
    RUN/checkpoint.pt           the state after the last finished epoch (replaced atomically; "spn" holds the
                                generative network's state, a baseline's too)
    RUN/samples.h5              final samples: "samples" (data units), "model_samples" (model space)

Under ``torchrun`` (a :class:`~.distributed.World` of several processes) every rank trains on its shard of each
batch (``batch_size`` is the global batch), every optimizer's gradients are summed over the ranks before its step
(:class:`~.distributed.GradientSync`), and rank 0 alone reads and writes the run folder (see ``docs/distributed.md``).

A new run writes only into an empty (or new) folder, or with ``overwrite`` replaces the run files of the folder
(:mod:`.run_folder`); every check (config, sizes, checkpoint, metrics log) comes before the first file is touched.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from tqdm import tqdm

from .. import atomic, checks
from ..data import Dataset, load_dataset
from ..em import EM
from ..joint import JointSPN
from ..objectives import Density, LikelihoodObjective
from . import run_folder
from .checkpoint import (
    checkpoint_content,
    checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .distributed import (
    SINGLE,
    GradientSync,
    World,
    all_reduce_sum,
    all_sum,
    barrier,
    broadcast_state,
    check_replicas,
    decide_on_main,
    optimizers_of,
)
from .model import DataInfo, Model, resolve_device
from .records import append_metrics, metrics_until, write_hdf5, write_metrics

_LIKELIHOOD = LikelihoodObjective()  # of pre-training epochs (only circuits pre-train: the config checks it)
CHECKPOINT_KEYS = ("config", "epoch", "spn", "objective", "temperature", "optimizer", "rng", "preprocessing", "data")
# Fields a resumed run may change; every other field must equal the checkpoint's.
RESUMABLE_CHANGES = ("resume", "overwrite", "device", "epochs", "output")


class NonFiniteLossError(RuntimeError):
    """The loss of a batch was NaN or infinite; training stopped, the last checkpoint is untouched."""

    def __init__(self, epoch: int, batch: int, value: float) -> None:
        super().__init__(f"non-finite loss {value} at epoch {epoch}, batch {batch}; the checkpoint of the last "
                         f"finished epoch is kept")
        self.epoch, self.batch, self.value = epoch, batch, value


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int,
                  max_batches: int | None = None) -> list[Tensor]:
    """The index batches of one epoch: a shuffle that is a pure function of ``(seed, epoch)``, in full batches
    (the incomplete last batch is dropped unless it is the only one), at most ``max_batches`` of them."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    order = torch.randperm(num_examples, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and batches[-1].shape[0] < batch_size:
        batches.pop()
    return batches[:max_batches]


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


class Trainer:
    """Trains the model a :class:`TrainConfig` describes and writes its run folder (see the module docstring).

    Construction loads the data, builds the model (seeded) and, for ``config.resume``, restores the
    checkpoint in ``config.run_dir``: the model, the optimizers, the temperature and every RNG state, so
    that :meth:`fit` continues bit-identically to an uninterrupted run (on the CPU; CUDA kernels may be
    non-deterministic).

    Args:
        config: the run.
        progress: show a progress bar (only when stderr is a terminal, on rank 0).
        world: the processes training the run together (:func:`~.distributed.start`); one by default. Rank 0 alone
            checks and writes the run folder and reads the checkpoint, which it hands to the other ranks.

    Raises:
        ValueError: an invalid config or a circuit too large, an ``output`` that is not empty without ``resume``
            or ``overwrite``, a checkpoint whose config differs from ``config`` in a field a resumed run may not
            change, or a damaged metrics log.
        FileNotFoundError: ``resume`` without a checkpoint, or missing data files (``DatasetNotFoundError``).
        CheckpointError: an unreadable checkpoint (a ``ValueError``).
    """

    def __init__(self, config: TrainConfig, progress: bool = True, world: World = SINGLE) -> None:
        self.config = config.validate()
        self.run_dir = config.run_dir
        self.progress = progress
        self.world = world
        self.device = resolve_device(config.device)
        path = checkpoint_path(self.run_dir)
        state, saved_epochs = decide_on_main(world, lambda: _checked_start(config, path))
        _seed_everything(config.seed)
        self.data: Dataset = self._load_data()
        self.info = DataInfo.of(self.data)
        self.model = Model.build(config, self.info).to(self.device)
        assert config.lr is not None
        self.optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=config.lr, betas=self.model.adam_betas)
        self.em = EM(self.model.spn, step_size=config.em_step_size) if config.optimizer == "em" else None
        self.epoch = 0  # finished epochs
        if state is not None:
            with checkpoint_content(path):
                self._restore(state, saved_epochs)
            if self.epoch > config.epochs:
                raise ValueError(f"epochs must be >= the {self.epoch} epochs the checkpoint has finished, "
                                 f"got {config.epochs}")
        # Every check has passed: only now are files written (by rank 0 alone).
        decide_on_main(world, lambda: self._prepare_folder(resumed=state is not None))
        broadcast_state(world, [self.model])
        self.sync = GradientSync(world)
        for optimizer in (self.optimizer, *optimizers_of(self.model.objective)):
            self.sync.attach(optimizer)

    def _load_data(self) -> Dataset:
        """The run's data set, read (and cached) by rank 0 first, then by the other ranks."""
        config = self.config

        def load() -> Dataset:
            return load_dataset(config.dataset, leaf=config.leaf, root=config.data_root, download=config.download,
                                seed=config.seed)

        data = load() if self.world.is_main else None
        barrier(self.world, "loading the data")
        return load() if data is None else data

    def _prepare_folder(self, resumed: bool) -> None:
        """Prepares the run folder and writes the config and the metrics log (those of the checkpoint's epochs on
        resume)."""
        metrics = metrics_until(self.run_dir / "metrics.jsonl", self.epoch) if resumed else []
        run_folder.prepare(self.run_dir, overwrite=self.config.overwrite)
        atomic.write_text(self.run_dir / "config.json", self.config.to_json() + "\n")
        write_metrics(self.run_dir / "metrics.jsonl", metrics)

    @classmethod
    def resume(cls, run_dir: str | Path, *, device: str | None = None, epochs: int | None = None,
               progress: bool = True, world: World = SINGLE) -> Trainer:
        """The trainer of the run in ``run_dir`` (the folder or its checkpoint file), continuing from its
        checkpoint (optionally on another ``device`` or with more ``epochs``); rank 0 reads the checkpoint."""
        path = checkpoint_path(run_dir)
        config = decide_on_main(world, lambda: _saved_config(path))
        changes: dict[str, Any] = {"resume": True, "overwrite": False, "output": str(path.parent)}
        if device is not None:
            changes["device"] = device
        if epochs is not None:
            changes["epochs"] = epochs
        return cls(dataclasses.replace(config, **changes), progress, world)

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Trains from the next epoch to ``config.epochs``, then writes ``samples.h5``; returns the new
        epochs' metrics records.

        Raises:
            NonFiniteLossError: a batch's loss was not finite (nothing of that epoch is written).
        """
        records = []
        for epoch in range(self.epoch, self.config.epochs):
            records.append(self._epoch(epoch))
        if self.world.is_main:
            self.write_final_samples()
        return records

    def _epoch(self, epoch: int) -> dict[str, Any]:
        """Trains epoch ``epoch`` (0-based), validates, and writes its picture, metrics line and checkpoint."""
        config, model, world = self.config, self.model, self.world
        start = time.perf_counter()
        if world.distributed:  # each rank its own samples, the same whether or not the run was resumed
            _seed_everything(world.seed(config.seed, epoch))
        model.temperature.step(epoch, config.epochs)
        pretraining = epoch < config.pretrain_epochs
        batches = epoch_batches(self.data.train.shape[0], config.batch_size, config.seed, epoch,
                                config.max_batches_per_epoch)
        sums: dict[str, float] = defaultdict(float)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                   disable=not (self.progress and world.is_main and sys.stderr.isatty()))
        labels = self.data.train_labels
        for number, batch in enumerate(bar, start=1):
            index = world.shard(batch)
            weight = self.sync.weight = index.shape[0] / batch.shape[0] if world.distributed else 1.0
            x = model.training_batch(self.data.train[index].to(self.device), None if labels is None else labels[index])
            tau = model.temperature()
            metrics: dict[str, float] = {}
            if self.em is not None and (pretraining or config.objective == "ll"):
                loss_value = self._em_step(x)
            else:
                loss_value, metrics = self._gradient_step(x, tau, pretraining, weight)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(epoch + 1, number, loss_value)
            local = {key: weight * value for key, value in metrics.items()}  # summed over the ranks below
            for key, value in {"train_loss": loss_value, "temperature": float(tau.detach()), **local}.items():
                sums[key] += value
            bar.set_postfix(loss=f"{loss_value:.4g}")
        reduced = [key for key in sums if key not in ("train_loss", "temperature")]
        sums.update(zip(reduced, all_sum(world, [sums[key] for key in reduced], "sharing the metrics"), strict=True))
        record = {"epoch": epoch + 1, "phase": "pretrain" if pretraining else "train",
                  **{key: value / len(batches) for key, value in sums.items()},
                  "val_nll": self.validation_nll(), "seconds": time.perf_counter() - start}
        check_replicas(world, [model])
        self.epoch = epoch + 1
        if world.is_main:
            self.model.save_picture(self.run_dir / f"samples_epoch{epoch + 1:03d}.png", self.data.preprocessing,
                                    config.batch_size, data=None if self.info.is_image else self.data.val)
            append_metrics(self.run_dir / "metrics.jsonl", record)
            save_checkpoint(self._state(), checkpoint_path(self.run_dir))  # after the picture: its RNG state is next
        if self.progress and world.is_main and sys.stderr.isatty():
            val_nll = "n/a" if record["val_nll"] is None else f"{record['val_nll']:.4g}"
            tqdm.write(f"epoch {record['epoch']}: train_loss {record['train_loss']:.4g}, "
                       f"val_nll {val_nll}, τ {record['temperature']:.3g}")
        return record

    def _gradient_step(self, x: Tensor, tau: Tensor, pretraining: bool,
                       weight: float) -> tuple[float, dict[str, float]]:
        """One Adam step on the batch ``x`` (the objective's auxiliary step first); returns the loss of the global
        batch (the same on every rank) and the objective's metrics."""
        model, world = self.model, self.world
        d = model.distribution(tau)
        metrics = {} if pretraining else model.objective.auxiliary_step(d, x)
        loss = _LIKELIHOOD.loss(cast(Density, d), x) if pretraining else model.objective.loss(d, x)
        loss_value = float(loss.detach())
        if world.distributed:
            loss_value = all_sum(world, [weight * loss_value], "sharing the loss")[0]
        if math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return loss_value, metrics

    def _em_step(self, x: Tensor) -> float:
        """One EM step on the batch ``x`` (a PAE circuit's latents enter as missing and are marginalized);
        returns the global batch's negative log-likelihood per example before the update."""
        assert self.em is not None
        network = self.model.network
        if isinstance(network, JointSPN) and not self.model.class_conditional:
            x = network.join(x, None)
        reduce = (lambda values: all_reduce_sum(self.world, values, "the EM statistics")) \
            if self.world.distributed else None
        return -self.em.step(x, reduce)

    # -- evaluation and outputs -----------------------------------------------------------------------
    def _batches(self, x: Tensor) -> Iterator[Tensor]:
        """The batches of ``x`` (at most ``max_batches_per_epoch``) on the device: this rank's share of them."""
        for number, batch in enumerate(x.split(self.config.batch_size)):
            if self.config.max_batches_per_epoch is not None and number >= self.config.max_batches_per_epoch:
                return
            if number % self.world.size == self.world.rank:
                yield batch.to(self.device)

    @torch.no_grad()
    def validation_nll(self) -> float | None:
        """The mean negative log-likelihood (nats per example) of the validation split (at most
        ``max_batches_per_epoch`` batches of it); for the VAE from its importance-weighted bound (an upper
        bound of the NLL); ``None`` for a model without a likelihood."""
        if not self.model.has_likelihood:
            return None
        total, count = 0.0, 0.0
        for x in self._batches(self.data.val):
            total -= float(self.model.log_likelihood(x).sum())
            count += x.shape[0]
        total, count = all_sum(self.world, [total, count], "sharing the validation")
        return total / count

    def write_final_samples(self) -> None:
        """``RUN/samples.h5``: ``num_final_samples`` samples in data units ("samples") and model space
        ("model_samples"), with the objective, data set and epoch as attributes."""
        samples = self.model.sample(self.config.num_final_samples, self.config.batch_size)
        write_hdf5(self.run_dir / "samples.h5",
                   {"samples": self.data.preprocessing.inverse(samples), "model_samples": samples},
                   {"objective": self.config.objective, "dataset": self.config.dataset, "epoch": self.epoch,
                    "leaf": self.info.leaf.name})

    # -- checkpoints ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "epoch": self.epoch,
            "spn": self.model.network.state_dict(),
            "objective": self.model.objective.state_dict(),
            "temperature": self.model.temperature.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "em": None if self.em is None else self.em.state_dict(),
            "rng": rng_state(cuda=self.device.type == "cuda"),
            "preprocessing": self.data.preprocessing.state_dict(),
            "data": self.info.state_dict(),
        }

    def _restore(self, state: dict[str, Any], saved_epochs: int) -> None:
        """Restores the checkpoint ``state`` of a run of ``saved_epochs`` epochs (its epoch checked first)."""
        epoch = checks.integer("epoch", state["epoch"], minimum=1, maximum=saved_epochs)
        self.model.network.load_state_dict(state["spn"])
        self.model.objective.load_state_dict(state["objective"])
        self.model.temperature.load_state_dict(state["temperature"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.em is not None and state.get("em") is not None:
            self.em.load_state_dict(state["em"])
        self.epoch = epoch
        set_rng_state(state["rng"])


def _checked_start(config: TrainConfig, path: Path) -> tuple[dict[str, Any] | None, int]:
    """Checks that ``config`` may start (its run folder) or resume (the checkpoint ``path``, whose config must match);
    returns the checkpoint's state (``None`` for a new run) and the number of epochs of its run."""
    if not config.resume:
        run_folder.check_new_run(config.run_dir, config.overwrite)
        return None, 0
    state = load_checkpoint(path, CHECKPOINT_KEYS)
    with checkpoint_content(path):
        saved = TrainConfig.from_json(state["config"]).validate()
    _check_resumable(saved, config)
    return state, saved.epochs


def _saved_config(path: Path) -> TrainConfig:
    """The validated config of the checkpoint ``path``."""
    state = load_checkpoint(path, ("config",))
    with checkpoint_content(path):
        return TrainConfig.from_json(state["config"]).validate()


def _check_resumable(saved: TrainConfig, config: TrainConfig) -> None:
    """``ValueError`` naming every field in which ``config`` differs from the checkpoint's ``saved`` config,
    other than the fields a resumed run may change."""
    changed = [f"{f.name} (saved {getattr(saved, f.name)!r}, given {getattr(config, f.name)!r})"
               for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        raise ValueError(f"resume: the config differs from the checkpoint's in {', '.join(changed)}; only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change")
