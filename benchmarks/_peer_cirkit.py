"""Benchmark adapter for cirkit (PyPI ``libcirkit`` >= 0.3), run with the peers' virtual environment.

The circuit is built from cirkit's ``RandomBinaryTree(num_variables, depth, num_repetitions)`` region
graph (the RAT-SPN region graph) with ``"tucker"`` sum-product layers (a Kronecker product of the two
children's ``K`` units followed by a dense sum layer: our einsum layer), ``K`` Binomial input units per
variable, a one-unit top layer per repetition and a mixing layer over the repetitions at the root: the
same 1,280,810 parameters in the paper configuration. It is compiled with cirkit's default pipeline
(``semiring="lse-sum", fold=True, optimize=True``).
"""

from __future__ import annotations

import functools
from importlib.metadata import version

import torch
from _common import (
    LOG_PROB,
    OBJECTIVE_STEPS,
    RSAMPLE_SOFT_REGION,
    RSAMPLE_SOFT_UNIT,
    RSAMPLE_ST,
    SAMPLE,
    TRAIN_STEP,
    Built,
    Config,
    random_data,
    train_step_op,
)
from cirkit.pipeline import compile as compile_circuit
from cirkit.symbolic.parameters import mixing_weight_factory
from cirkit.templates.region_graph import RandomBinaryTree
from cirkit.templates.utils import Parameterization, name_to_input_layer_factory, parameterization_to_factory

NO_RSAMPLE = "cirkit 0.3 has no differentiable sampling"


def _no_sample_reason(cfg: Config) -> str:
    folds = cfg.num_features * cfg.num_repetitions
    padded = folds * cfg.num_leaves * cfg.batch * cfg.num_features
    return ("cirkit 0.3 cannot sample this circuit: the compiled Tucker layer has no sample() ('Sampling not "
            "implemented'), and compiled with optimize=False the Kronecker layer's samples do not fit the sum "
            "layer's (index out of bounds); besides, SamplingQuery pads every input layer's samples to all "
            "variables: "
            f"[{folds} folds, {cfg.num_leaves}, {cfg.batch}, {cfg.num_features}] float32 = "
            f"{4 * padded / 2**30:.1f} GiB here")


def build(cfg: Config) -> Built:
    """cirkit circuit matching the RAT-SPN, as the ``image_data`` template would build it."""
    region_graph = RandomBinaryTree(cfg.num_features, depth=cfg.depth, num_repetitions=cfg.num_repetitions,
                                    seed=cfg.seed)
    sum_weights = parameterization_to_factory(Parameterization(activation="softmax", initialization="normal"))
    symbolic = region_graph.build_circuit(
        input_factory=name_to_input_layer_factory("binomial", total_count=cfg.total_count),
        sum_product="tucker",
        sum_weight_factory=sum_weights,
        nary_sum_weight_factory=functools.partial(mixing_weight_factory, param_factory=sum_weights),
        num_input_units=cfg.num_leaves,
        num_sum_units=cfg.num_sums,
        num_classes=1,
        factorize_multivariate=True,
    )
    circuit = compile_circuit(symbolic)
    x = random_data(cfg).reshape(cfg.batch, cfg.num_features).long()

    def log_prob() -> None:
        with torch.no_grad():
            circuit(x)

    return Built(
        num_params=sum(p.numel() for p in circuit.parameters()),
        description=(f"cirkit RandomBinaryTree({cfg.num_features}, depth={cfg.depth}, "
                     f"num_repetitions={cfg.num_repetitions}) + tucker layers (K={cfg.num_sums}), "
                     f"{cfg.num_leaves} binomial(total_count={cfg.total_count}) input units per variable, "
                     "compiled with the default pipeline"),
        versions={"libcirkit": version("libcirkit"), "torch": torch.__version__},
        ops={
            LOG_PROB: log_prob,
            TRAIN_STEP: train_step_op(list(circuit.parameters()), lambda: -circuit(x).mean()),
        },
        unsupported={SAMPLE: _no_sample_reason(cfg), RSAMPLE_ST: NO_RSAMPLE, RSAMPLE_SOFT_UNIT: NO_RSAMPLE,
                     RSAMPLE_SOFT_REGION: NO_RSAMPLE, **{op: NO_RSAMPLE for op in OBJECTIVE_STEPS}},
    )
