"""The methods an experiment compares: the circuit's four objectives, the paper's proposed hybrids
(likelihood pre-training, joint ``+ λ·NLL``) and the neural baselines, each as changes to a
:class:`~pyro_spn.train.TrainConfig`, with the validation criterion its grid search selects by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SELECTIONS: tuple[str, ...] = ("nll", "samples", "reconstruction")


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: the method's name in tables and folders.
        description: one line for reports.
        objective: the ``TrainConfig.objective``.
        model: the ``TrainConfig.model`` (``"spn"`` or a baseline).
        selection: what the grid search minimizes on the validation split: ``"nll"`` (negative
            log-likelihood), ``"samples"`` (FID for images, MMD² for 2-D sets) or ``"reconstruction"``.
        pretrain: the first half of the epochs maximize the likelihood (LL pre-training).
        hybrid: the loss is ``objective + λ · NLL`` (``λ`` from the experiment's ``nll_weight``).
        images_only: the method runs on image data sets only.
        class_conditional: a circuit over the data and the class label, trained by maximum likelihood of the
            joint (``TrainConfig.class_conditional``); its evaluation adds the classifier-on-samples accuracy.
        estimator: the ``TrainConfig.estimator`` of the sample-based objective (:mod:`pyro_spn.estimators`).
        fixed_kernel: MMD with the fixed RBF kernel at the data's scale (``mmd_adversarial=False``,
            ``mmd_bandwidths="data"``) instead of the learned one.
    """

    name: str
    description: str
    objective: str
    model: str = "spn"
    selection: str = "samples"
    pretrain: bool = False
    hybrid: bool = False
    images_only: bool = False
    class_conditional: bool = False
    estimator: str = "soft"
    fixed_kernel: bool = False

    def train_options(self, epochs: int, nll_weight: float) -> dict[str, Any]:
        """The ``TrainConfig`` fields this method sets for a run of ``epochs`` epochs."""
        options: dict[str, Any] = {"objective": self.objective, "model": self.model}
        if self.class_conditional:
            options["class_conditional"] = True
        if self.pretrain:
            options["pretrain_epochs"] = epochs // 2
        if self.hybrid:
            options["nll_weight"] = nll_weight
        if self.estimator != "soft":
            options["estimator"] = self.estimator
        if self.fixed_kernel:
            options.update(mmd_adversarial=False, mmd_bandwidths="data")
        return options


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ll", "SPN, maximum likelihood", "ll", selection="nll"),
    Method("adv", "SPN, adversarial (non-saturating GAN loss on its soft samples)", "adv"),
    Method("mmd", "SPN, MMD² with an adversarially learned kernel", "mmd"),
    Method("ll-class", "SPN over data and class label, maximum likelihood (classifier-on-samples)", "ll",
           selection="nll", images_only=True, class_conditional=True),
    Method("pae", "SPN, probabilistic auto-encoding", "pae", selection="reconstruction", images_only=True),
    Method("adv-pretrained", "SPN, LL for the first half of the epochs, then adversarial", "adv", pretrain=True),
    Method("adv+nll", "SPN, adversarial + λ·NLL jointly", "adv", hybrid=True),
    Method("mmd-pretrained", "SPN, LL for the first half of the epochs, then MMD", "mmd", pretrain=True),
    Method("mmd+nll", "SPN, MMD + λ·NLL jointly", "mmd", hybrid=True),
    # the unbiased estimators (pyro_spn.estimators): exact samples with the score function, exact expectations
    Method("adv-st", "SPN, adversarial, straight-through (exact samples, relaxed gradient)", "adv",
           estimator="straight_through"),
    Method("adv-score", "SPN, adversarial, score-function gradient (exact samples, unbiased)", "adv",
           estimator="score"),
    Method("adv-score-pretrained", "SPN, LL for half of the epochs, then adversarial with the score function",
           "adv", estimator="score", pretrain=True),
    Method("adv-score+nll", "SPN, adversarial with the score function + λ·NLL", "adv", estimator="score",
           hybrid=True),
    Method("mmd-score", "SPN, MMD² with a learned kernel, score-function gradient", "mmd", estimator="score"),
    Method("mmd-score+nll", "SPN, MMD² with a learned kernel, score function, + λ·NLL", "mmd", estimator="score",
           hybrid=True),
    Method("mmd-exact", "SPN, MMD² with fixed kernels at the data's scale, exact-gradient estimator", "mmd",
           estimator="exact", fixed_kernel=True),
    Method("mmd-exact-pretrained", "SPN, LL for half of the epochs, then exact-gradient MMD² (fixed kernels)", "mmd",
           estimator="exact", fixed_kernel=True, pretrain=True),
    Method("mmd-exact+nll", "SPN, exact-gradient MMD² (fixed kernels) + λ·NLL", "mmd", estimator="exact",
           fixed_kernel=True, hybrid=True),
    Method("pae-exact", "SPN, probabilistic auto-encoding, the exact expected reconstruction error", "pae",
           selection="reconstruction", images_only=True, estimator="exact"),
    Method("vae", "VAE (Gaussian prior), negative ELBO, parameters matched to the SPN", "ll", model="vae",
           selection="nll"),
    Method("gan", "GAN (DCGAN generator for images), generator parameters matched to the SPN", "adv", model="gan"),
    Method("mmd-gan", "MMD-GAN (learned kernel), generator parameters matched to the SPN", "mmd", model="mmd-gan"),
)}


def get_method(name: str) -> Method:
    """The method called ``name``; ``ValueError`` listing the accepted names otherwise."""
    if name not in METHODS:
        raise ValueError(f"methods: unknown method {name!r}; accepted: {', '.join(METHODS)}")
    return METHODS[name]
