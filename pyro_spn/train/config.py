"""``TrainConfig``: every knob of a training run, validated, and saved as ``RUN/config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .. import checks
from ..data import DATASETS
from ..data import LEAVES as DATA_LEAVES
from ..objectives import OBJECTIVES
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
#: Fields of earlier versions of the config, and their names now.
RENAMED_FIELDS: dict[str, str] = {"straight_through": "hard"}


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
        dataset: a name of ``pyro_spn.data.DATASETS``.
        data_root: the folder holding (or receiving) the data files.
        download: download missing data files.
        leaf: the leaf type, ``"auto"`` for the data set's default (``"binomial"``, ``"normal"``, ``"bernoulli"``).
        depth: circuit depth ``D``; ``None`` for ``min(4, floor(log2 F))`` (``F`` data variables).
        num_repetitions: ``R``.
        num_sums: ``K``, sum units per region.
        num_leaves: leaf components per leaf region.
        temperature: the Gumbel-Softmax temperature schedule, ``"constant"``, ``"annealed"`` or ``"learned"``.
        tau: the constant, starting or initial ``τ``.
        tau_min: the annealed schedule's floor.
        tau_rate: the annealed schedule's decay rate (``τ = max(tau_min, tau · exp(−rate · epoch / epochs))``).
        hard: differentiable samples are exact forward with straight-through gradients backward; ``False``
            (default) is the paper's soft interpolation of child samples (sample-based objectives only).
        interpolation: ``"unit"`` (the paper's, every sum unit draws) or ``"region"`` (``K`` times cheaper).
        lr: the circuit's (or the baseline's) Adam learning rate; ``None`` for the model's (:data:`MODEL_DEFAULTS`).
        batch_size: examples per mini-batch.
        epochs: passes over the training split (pre-training epochs included).
        seed: seeds the data split, the circuit, the neural parts, the shuffles and the sampler.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        output: the run folder; ``None`` for ``runs/<objective>-<dataset>-seed<seed>``.
        resume: continue the run in ``output`` from its checkpoint.
        pretrain_epochs: the first epochs minimize the negative log-likelihood instead of the objective.
        nll_weight: ``λ`` of the hybrid loss ``objective + λ · NLL``; ``0`` for the objective alone.
        discriminator_steps: discriminator (ADV) or kernel encoder (MMD) updates per circuit update.
        discriminator_lr: the discriminator's Adam learning rate (ADV).
        mmd_adversarial: learn the MMD kernel adversarially (MMD-GAN) instead of a fixed RBF kernel on the data.
        encoder_lr: the MMD kernel encoder's Adam learning rate.
        latent_dim: the number of Gaussian latent variables (PAE and the baselines).
        num_final_samples: samples written to ``samples.h5`` at the end.
        max_batches_per_epoch: stop each epoch (and each validation) after this many batches; ``None`` for all.
    """

    model: str = "spn"
    objective: str | None = None
    class_conditional: bool = False
    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    leaf: str = "auto"
    depth: int | None = None
    num_repetitions: int = 10
    num_sums: int = 20
    num_leaves: int = 20
    temperature: str = "annealed"
    tau: float = 1.0
    tau_min: float = 0.5
    tau_rate: float = 1.0
    hard: bool = False
    interpolation: str = "unit"
    lr: float | None = None
    batch_size: int = 128
    epochs: int = 30
    seed: int = 0
    device: str = "auto"
    output: str | None = None
    resume: bool = False
    pretrain_epochs: int = 0
    nll_weight: float = 0.0
    discriminator_steps: int = 1
    discriminator_lr: float = 2e-4
    mmd_adversarial: bool = True
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
        return Path(self.output if self.output is not None else f"runs/{name}-{self.dataset}-seed{self.seed}")

    def validate(self) -> TrainConfig:
        """Raises ``ValueError`` (``TypeError`` for a value of the wrong type) naming the first bad field and its
        accepted values; returns ``self``."""
        checks.choice("model", self.model, MODELS)
        checks.choice("objective", self.objective, OBJECTIVES)
        checks.choice("dataset", self.dataset, DATASETS)
        checks.choice("leaf", self.leaf, LEAVES)
        checks.choice("temperature", self.temperature, TEMPERATURES)
        checks.choice("interpolation", self.interpolation, INTERPOLATIONS)
        checks.choice("device", self.device, DEVICES)
        for name in ("download", "hard", "resume", "mmd_adversarial", "class_conditional"):
            checks.flag(name, getattr(self, name))
        if not isinstance(self.data_root, str) or not self.data_root:
            raise ValueError(f"data_root must be a non-empty path, got {self.data_root!r}")
        if self.output is not None and (not isinstance(self.output, str) or not self.output):
            raise ValueError(f"output must be a non-empty path or None, got {self.output!r}")
        if self.depth is not None:
            checks.integer("depth", self.depth, maximum=30)
        for name in ("num_repetitions", "num_sums", "num_leaves", "batch_size", "epochs", "discriminator_steps",
                     "latent_dim", "num_final_samples"):
            checks.integer(name, getattr(self, name))
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
        return self

    def _validate_baseline(self) -> None:
        """A baseline fixes its objective and has no circuit-only options."""
        expected = MODEL_DEFAULTS[self.model][0]
        if self.objective != expected:
            fixed = ", ".join(f"{m}: {o}" for m, (o, _) in MODEL_DEFAULTS.items() if m != "spn")
            raise ValueError(f"objective must be {expected} for model {self.model} (the baselines train with {fixed}), "
                             f"got {self.objective!r}")
        if self.model == "mmd-gan" and not self.mmd_adversarial:
            raise ValueError("mmd_adversarial must be true for model mmd-gan (a learned kernel), got False")
        for name, default in (("pretrain_epochs", 0), ("nll_weight", 0.0), ("hard", False)):
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
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"config: expected a JSON object, got {type(values).__name__}")
        values = {RENAMED_FIELDS.get(name, name): value for name, value in values.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}; accepted: {sorted(known)}")
        return cls(**values)

