"""``TrainConfig``: every knob of a training run, validated, and saved as ``RUN/config.json``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .. import checks
from ..data import DATASETS, event_shape_of
from ..data import LEAVES as DATA_LEAVES
from ..data.custom import is_custom, safe_name
from ..estimators import ESTIMATORS
from ..objectives import OBJECTIVES
from ..region_graphs import region_trees
from ..sampling import INTERPOLATIONS
from ..temperature import KINDS as TEMPERATURES

MODELS: tuple[str, ...] = ("spn", "vae", "gan", "mmd-gan")
#: The objective and learning rate each model trains with by default: the circuit by likelihood; the VAE maximizes
#: its ELBO (its likelihood bound), the GAN is trained adversarially, the MMD-GAN by the MMD with an adversarially
#: learned kernel (mmd_adversarial). The baselines' objectives are fixed.
MODEL_DEFAULTS: dict[str, tuple[str, float]] = {"spn": ("ll", 1e-2), "vae": ("ll", 1e-3), "gan": ("adv", 2e-4),
                                                "mmd-gan": ("mmd", 2e-4)}
LEAVES: tuple[str, ...] = ("auto", *DATA_LEAVES)
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: The MMD kernels' bandwidths: σ ∈ {1, 2, 4, 8, 16} on the scaled data, or at the data's scale.
MMD_BANDWIDTHS: tuple[str, ...] = ("fixed", "data")
#: How the circuit's likelihood is maximized: Adam's gradient steps, or mini-batch EM (:mod:`pyro_spn.em`).
OPTIMIZERS: tuple[str, ...] = ("adam", "em")
#: The circuit's region graph (:mod:`pyro_spn.region_graphs`): random binary trees (RAT-SPN), image quad-trees, trees
#: drawn from the Poon-Domingos region graph (not the PD DAG), or the user's trees (``region_graph``).
STRUCTURES: tuple[str, ...] = ("rat", "quad-tree", "poon-domingos", "user")
#: The structures that need image data ``(C, H, W)``.
IMAGE_STRUCTURES: tuple[str, ...] = ("quad-tree", "poon-domingos")
#: The most latent variables a run may have (more than any data set has values).
MAX_LATENT_DIM = 2**16
#: Boolean fields of earlier versions of the config that chose straight-through (true) or soft (false) samples, now
#: ``estimator``: ``straight_through`` (0.1) and ``hard`` (development versions of 0.2).
ESTIMATOR_FLAGS: tuple[str, ...] = ("straight_through", "hard")
#: The estimators each sample-based objective takes (``"exact"``: MMD with the fixed kernel, PAE).
OBJECTIVE_ESTIMATORS: dict[str, tuple[str, ...]] = {"adv": ESTIMATORS[:3], "mmd": ESTIMATORS, "pae": ESTIMATORS}


@dataclass
class TrainConfig:
    """A training run. The defaults are the paper's set-up (K = 20, R = 10, D = 4 for 28 × 28 images,
    annealed temperature from 1 to 0.5, Adam, 30 epochs) on the bundled 8 × 8 digits.

    Attributes:
        model: what is trained: ``"spn"`` (the circuit) or a neural baseline with as many parameters as that
            circuit would have, ``"vae"`` (objective ``"ll"``: it maximizes its ELBO), ``"gan"`` (objective
            ``"adv"``) or ``"mmd-gan"`` (objective ``"mmd"`` with ``mmd_adversarial``); see
            :mod:`pyro_spn.nets.baselines`. Baselines ignore the temperature and ``interpolation``.
        objective: ``"ll"`` (maximum likelihood), ``"adv"`` (adversarial), ``"mmd"`` (maximum mean
            discrepancy) or ``"pae"`` (probabilistic auto-encoding).
        dataset: a name of ``pyro_spn.data.DATASETS``, or ``path:<path>[#<dataset>]`` for your own data (a folder
            of images, an ``.npy`` array or an HDF5 file; :mod:`pyro_spn.data.custom`).
        data_root: the folder holding (or receiving) the data files, and the HDF5 cache of decoded images
            (``<data_root>/cache``); ``None`` for ``data`` in the working folder, with the cache in the user's
            private cache folder (``~/.cache/pyro_spn/data``; see :func:`pyro_spn.data.load_dataset`).
        download: download missing data files.
        leaf: the leaf type, ``"auto"`` for the data set's default (``"binomial"``, ``"normal"``, ``"bernoulli"``).
        depth: circuit depth ``D``; ``None`` for ``min(4, floor(log2 F))`` (``F`` data variables), or with structure
            ``"user"`` for the user's deepest tree.
        num_repetitions: ``R`` (with structure ``"user"``: the number of the user's trees).
        structure: the region graph (:data:`STRUCTURES`): ``"rat"`` (random binary trees), ``"quad-tree"`` (shifted
            quad-trees, :func:`~pyro_spn.region_graphs.quad_tree`), ``"poon-domingos"`` (random trees drawn from the
            Poon-Domingos region graph with step ``pd_delta``, :func:`~pyro_spn.region_graphs.poon_domingos_trees`;
            not the PD DAG) or ``"user"`` (the trees in ``region_graph``). Image structures need image data; every
            structure but ``"rat"`` needs a circuit over the data alone (not objective ``pae``, nor
            ``class_conditional``).
        pd_delta: the step in pixels of the Poon-Domingos cuts.
        region_graph: the user's trees in the JSON shape of :mod:`pyro_spn.region_graphs` (structure ``"user"``;
            the command line reads them from ``--structure-file``), kept in the config so a run rebuilds its circuit.
        num_sums: ``K``, sum units per region.
        num_leaves: leaf components per leaf region.
        temperature: the Gumbel-Softmax temperature schedule, ``"constant"``, ``"annealed"`` or ``"learned"``.
        tau: the constant, starting or initial ``τ``.
        tau_min: the annealed schedule's floor.
        tau_rate: the annealed schedule's decay rate (``τ = max(tau_min, tau · exp(−rate · epoch / epochs))``).
        estimator: how a sample-based objective's gradient through the circuit's samples is estimated
            (:mod:`pyro_spn.estimators`): ``"soft"`` (the paper's relaxation, the default), ``"straight_through"``,
            ``"score"`` (exact samples and the score function, unbiased) or ``"exact"`` (no sampling: MMD with the
            fixed kernel, PAE). Baselines take ``"soft"`` (their own reparameterized samples).
        interpolation: ``"unit"`` (the paper's, every sum unit draws) or ``"region"`` (``K`` times cheaper).
        optimizer: ``"adam"``, or ``"em"``: mini-batch EM (:class:`pyro_spn.em.EM`) for the likelihood epochs
            (objective ``ll``, or the ``pretrain_epochs``; Adam trains the objective afterwards).
        em_step_size: EM's fixed step size in ``(0, 1]``; ``None`` for the decaying ``(t + 2)^-0.6``.
        lr: the circuit's (or the baseline's) Adam learning rate; ``None`` for the model's (:data:`MODEL_DEFAULTS`).
        batch_size: examples per mini-batch.
        epochs: passes over the training split (pre-training epochs included).
        seed: seeds the data split, the circuit, the neural parts, the shuffles and the sampler.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        output: the run folder; ``None`` for ``runs/<objective>-<dataset>-seed<seed>``.
        resume: continue the run in ``output`` from its checkpoint.
        overwrite: start a new run in ``output`` even if it holds files: the files of a run there (and only those)
            are removed first. Without it (or ``resume``) a folder that is not empty is refused.
        pretrain_epochs: the first epochs minimize the negative log-likelihood instead of the objective.
        nll_weight: ``λ`` of the hybrid loss ``objective + λ · NLL``; ``0`` for the objective alone.
        discriminator_steps: discriminator (ADV) or kernel encoder (MMD) updates per circuit update.
        discriminator_lr: the discriminator's Adam learning rate (ADV).
        mmd_adversarial: learn the MMD kernel adversarially (MMD-GAN) instead of a fixed RBF kernel on the data.
        mmd_bandwidths: the RBF bandwidths of the MMD: ``"fixed"`` (``σ ∈ {1, 2, 4, 8, 16}`` on data divided by the
            leaf's scale, the paper's) or ``"data"`` (``{⅛, ¼, ½, 1, 2}`` times the training data's median pairwise
            distance, which resolves the structure of data a few units wide).
        encoder_lr: the MMD kernel encoder's Adam learning rate.
        latent_dim: the number of Gaussian latent variables (PAE and the baselines).
        num_final_samples: samples written to ``samples.h5`` at the end (at most
            :data:`~pyro_spn.checks.MAX_SAMPLE_VALUES` values in all).
        max_batches_per_epoch: stop each epoch (and each validation) after this many batches; ``None`` for all.
    """

    model: str = "spn"
    objective: str | None = None
    class_conditional: bool = False
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    leaf: str = "auto"
    depth: int | None = None
    num_repetitions: int = 10
    num_sums: int = 20
    num_leaves: int = 20
    structure: str = "rat"
    pd_delta: int = 4
    region_graph: list[Any] | None = None
    temperature: str = "annealed"
    tau: float = 1.0
    tau_min: float = 0.5
    tau_rate: float = 1.0
    estimator: str = "soft"
    interpolation: str = "unit"
    optimizer: str = "adam"
    em_step_size: float | None = None
    lr: float | None = None
    batch_size: int = 128
    epochs: int = 30
    seed: int = 0
    device: str = "auto"
    output: str | None = None
    resume: bool = False
    overwrite: bool = False
    pretrain_epochs: int = 0
    nll_weight: float = 0.0
    discriminator_steps: int = 1
    discriminator_lr: float = 2e-4
    mmd_adversarial: bool = True
    mmd_bandwidths: str = "fixed"
    encoder_lr: float = 5e-3
    latent_dim: int = 16
    num_final_samples: int = 1000
    max_batches_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.model in MODEL_DEFAULTS:
            objective, lr = MODEL_DEFAULTS[self.model]
            self.objective = objective if self.objective is None else self.objective
            self.lr = lr if self.lr is None else self.lr

    @property
    def run_dir(self) -> Path:
        """The run folder: ``output``, or ``runs/<objective>-<dataset>-seed<seed>`` (a baseline's name instead of
        the objective for baselines)."""
        name = self.objective if self.model == "spn" else self.model
        dataset = safe_name(self.dataset) if is_custom(self.dataset) else self.dataset
        return Path(self.output if self.output is not None else f"runs/{name}-{dataset}-seed{self.seed}")

    def validate(self) -> TrainConfig:
        """Raises ``ValueError`` (``TypeError`` for a value of the wrong type) naming the first bad field and its
        accepted values; returns ``self``."""
        checks.choice("model", self.model, MODELS)
        checks.choice("objective", self.objective, OBJECTIVES)
        if not is_custom(self.dataset):
            checks.choice("dataset", self.dataset, DATASETS)
        checks.choice("leaf", self.leaf, LEAVES)
        checks.choice("temperature", self.temperature, TEMPERATURES)
        checks.choice("interpolation", self.interpolation, INTERPOLATIONS)
        checks.choice("device", self.device, DEVICES)
        checks.choice("estimator", self.estimator, ESTIMATORS)
        checks.choice("mmd_bandwidths", self.mmd_bandwidths, MMD_BANDWIDTHS)
        for name in ("download", "resume", "overwrite", "mmd_adversarial", "class_conditional"):
            checks.flag(name, getattr(self, name))
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run in output, or replace it")
        if self.data_root is not None and (not isinstance(self.data_root, str) or not self.data_root):
            raise ValueError(f"data_root must be a non-empty path or None, got {self.data_root!r}")
        if self.output is not None and (not isinstance(self.output, str) or not self.output):
            raise ValueError(f"output must be a non-empty path or None, got {self.output!r}")
        if self.depth is not None:
            checks.integer("depth", self.depth, maximum=30)
        for name in ("num_repetitions", "num_sums", "num_leaves", "batch_size", "epochs", "discriminator_steps"):
            checks.integer(name, getattr(self, name))
        checks.integer("latent_dim", self.latent_dim, maximum=MAX_LATENT_DIM)
        checks.sample_count("num_final_samples", self.num_final_samples, math.prod(event_shape_of(self.dataset)))
        checks.integer("seed", self.seed, minimum=0, maximum=2**63 - 1)
        checks.integer("pretrain_epochs", self.pretrain_epochs, minimum=0)
        if self.pretrain_epochs > self.epochs:
            raise ValueError(f"pretrain_epochs must be <= epochs ({self.epochs}), got {self.pretrain_epochs}")
        if self.max_batches_per_epoch is not None:
            checks.integer("max_batches_per_epoch", self.max_batches_per_epoch)
        for name in ("tau", "tau_min", "lr", "discriminator_lr", "encoder_lr"):
            checks.positive(name, getattr(self, name))
        for name in ("tau_rate", "nll_weight"):
            checks.non_negative(name, getattr(self, name))
        if self.objective == "ll" and self.nll_weight != 0:
            raise ValueError(f"nll_weight must be 0 for the objective ll (the NLL itself), got {self.nll_weight}")
        if self.temperature == "annealed" and self.tau_min > self.tau:
            raise ValueError(f"tau_min must be <= tau ({self.tau}) for the annealed temperature, got {self.tau_min}")
        if self.class_conditional and (self.model != "spn" or self.objective != "ll"):
            raise ValueError(f"class_conditional needs model spn and objective ll, got model {self.model!r} and "
                             f"objective {self.objective!r}")
        if self.model != "spn":
            self._validate_baseline()
        self._validate_estimator()
        self._validate_optimizer()
        self._validate_structure()
        if self.objective == "mmd" and self.mmd_adversarial and self.mmd_bandwidths != "fixed":
            raise ValueError("mmd_bandwidths must be fixed with the learned kernel (mmd_adversarial): the data's "
                             f"scale is not its features', got {self.mmd_bandwidths!r}")
        return self

    def _validate_estimator(self) -> None:
        """The estimator must be one the objective takes (likelihood training takes any: it samples nothing)."""
        accepted = OBJECTIVE_ESTIMATORS.get(str(self.objective), ESTIMATORS)
        if self.model != "spn":
            accepted = ("soft",)
        elif self.objective == "mmd" and self.mmd_adversarial:
            accepted = ESTIMATORS[:3]
        if self.estimator not in accepted:
            where = f"model {self.model}" if self.model != "spn" else f"objective {self.objective}" + (
                " with the learned kernel (mmd_adversarial)" if self.objective == "mmd" else "")
            raise ValueError(f"estimator must be one of {', '.join(accepted)} for {where}, got {self.estimator!r}")

    def _validate_optimizer(self) -> None:
        """EM (:mod:`pyro_spn.em`) maximizes a circuit's likelihood: objective ll, or the pre-training epochs."""
        checks.choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.optimizer == "em":
            if self.model != "spn":
                raise ValueError(f"optimizer: 'em' fits circuits only, not model {self.model!r}")
            if self.objective != "ll" and self.pretrain_epochs == 0:
                raise ValueError("optimizer: 'em' maximizes the likelihood: use it with objective ll, or with "
                                 "pretrain_epochs > 0 (EM pre-training, then Adam on the objective)")
        if self.em_step_size is not None:
            checks.positive("em_step_size", self.em_step_size)
            if self.em_step_size > 1:
                raise ValueError(f"em_step_size must be in (0, 1], got {self.em_step_size!r}")

    def _validate_structure(self) -> None:
        """The structure must suit the data (images for quad-trees and Poon-Domingos trees) and the circuit (over the
        data alone); the user's trees must be a partition of the data's variables, one tree per repetition."""
        checks.choice("structure", self.structure, STRUCTURES)
        checks.integer("pd_delta", self.pd_delta)
        if (self.structure == "user") != (self.region_graph is not None):
            raise ValueError(f"region_graph must be given exactly with structure user (--structure-file), got "
                             f"structure {self.structure!r} and {'a' if self.region_graph is not None else 'no'} "
                             f"region_graph")
        if self.structure == "rat":
            return
        if self.objective == "pae" or self.class_conditional:
            raise ValueError(f"structure {self.structure} needs a circuit over the data alone: use structure rat with "
                             f"objective pae or class_conditional")
        shape = event_shape_of(self.dataset)
        if self.structure in IMAGE_STRUCTURES and len(shape) != 3:
            raise ValueError(f"structure {self.structure} needs image data (C, H, W); data set {self.dataset!r} has "
                             f"shape {shape}")
        if self.structure == "user":
            assert self.region_graph is not None  # checked above
            num_features = math.prod(shape[1:]) if len(shape) == 3 else math.prod(shape)
            try:
                trees = region_trees(self.region_graph, num_features, self.depth)
            except (TypeError, ValueError) as error:
                raise ValueError(f"region_graph: {error}") from None
            if trees.num_repetitions != self.num_repetitions:
                raise ValueError(f"num_repetitions must be the number of the region graph's trees "
                                 f"({trees.num_repetitions}), got {self.num_repetitions}")

    def _validate_baseline(self) -> None:
        """A baseline fixes its objective and has no circuit-only options."""
        expected = MODEL_DEFAULTS[self.model][0]
        if self.objective != expected:
            fixed = ", ".join(f"{m}: {o}" for m, (o, _) in MODEL_DEFAULTS.items() if m != "spn")
            raise ValueError(f"objective must be {expected} for model {self.model} (the baselines train with {fixed}), "
                             f"got {self.objective!r}")
        if self.model == "mmd-gan" and not self.mmd_adversarial:
            raise ValueError("mmd_adversarial must be true for model mmd-gan (a learned kernel), got False")
        for name, default in (("pretrain_epochs", 0), ("nll_weight", 0.0)):
            if getattr(self, name) != default:
                raise ValueError(f"{name} must be {default} for model {self.model} (it is a circuit option), "
                                 f"got {getattr(self, name)!r}")

    def to_json(self) -> str:
        """The config as an indented JSON object (every field)."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """The config saved by :meth:`to_json`; ``ValueError`` for malformed JSON or unknown fields
        (missing fields take their defaults)."""
        values = checks.json_object(text, "config: ")
        for flag in ESTIMATOR_FLAGS:
            if flag in values:
                value = values.pop(flag)
                if not isinstance(value, bool):
                    raise ValueError(f"config: {flag} must be true or false, got {value!r}")
                values.setdefault("estimator", "straight_through" if value else "soft")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}; accepted: {sorted(known)}")
        return cls(**values)

