"""Shared pieces of the circuit benchmark: the configuration, the adapter contract and the worker loop.

This module runs inside every worker process, including those started with the peers' virtual
environment, so it depends on the standard library and ``torch`` only.

A worker builds one library's model, then answers JSON-line commands on its protocol stream:

* ``{"cmd": "time", "op": NAME, "rewarm": BOOL}``: run the operation once (after one untimed call of it if
  ``rewarm``) and answer ``{"seconds": ...}`` (the timed call's wall-clock time) or ``{"error": ...}``;
* ``{"cmd": "quit"}``: exit.

In memory mode (``--memory OP``) a worker instead measures one call of ``OP`` right after construction
(see :func:`measure_memory`) and exits.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import torch

# Operation names, in table order.
# Pause before every timed call: an idle worker's OpenMP threads spin for a while after its last call and
# would otherwise compete with the worker being timed for the 2 cores.
SETTLE_S = 0.05
LOG_PROB = "log_prob"
TRAIN_STEP = "train_step"
SAMPLE = "sample"
RSAMPLE_ST = "rsample_st"
RSAMPLE_SOFT_UNIT = "rsample_soft_unit"
RSAMPLE_SOFT_REGION = "rsample_soft_region"
ADV_STEP = "adv_step"
MMD_STEP = "mmd_step"
ADV_STEP_SCORE = "adv_step_score"
MMD_STEP_SCORE = "mmd_step_score"
OPERATIONS = (LOG_PROB, TRAIN_STEP, SAMPLE, RSAMPLE_ST, RSAMPLE_SOFT_UNIT, RSAMPLE_SOFT_REGION, ADV_STEP, MMD_STEP,
              ADV_STEP_SCORE, MMD_STEP_SCORE)
#: The sample-based training steps (no peer library has them).
OBJECTIVE_STEPS = (ADV_STEP, MMD_STEP, ADV_STEP_SCORE, MMD_STEP_SCORE)
#: The Gumbel-Softmax temperature of the differentiable samplers (the paper's sample-quality runs use 0.5).
TAU = 0.5

OPERATION_LABELS = {
    LOG_PROB: "log-likelihood, no grad",
    TRAIN_STEP: "fwd + bwd + Adam step",
    SAMPLE: "exact sample, no grad",
    RSAMPLE_ST: "diff. sample (straight-through) + bwd",
    RSAMPLE_SOFT_UNIT: "diff. sample (soft, per unit) + bwd",
    RSAMPLE_SOFT_REGION: "diff. sample (soft, per region) + bwd",
    ADV_STEP: "ADV training step, soft (disc. + generator)",
    MMD_STEP: "MMD training step, soft (kernel + generator)",
    ADV_STEP_SCORE: "ADV training step, score estimator",
    MMD_STEP_SCORE: "MMD training step, score estimator",
}


@dataclass(frozen=True)
class Config:
    """The circuit and workload every library is built for."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    depth: int = 4
    num_repetitions: int = 10
    num_sums: int = 20
    num_leaves: int = 20
    total_count: int = 255
    batch: int = 128
    threads: int = 2
    seed: int = 0

    @property
    def num_features(self) -> int:
        """Number of random variables (pixels times channels)."""
        channels, height, width = self.image_shape
        return channels * height * width

    def to_json(self) -> str:
        """Serialize for a worker's command line."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        raw["image_shape"] = tuple(raw["image_shape"])
        return cls(**raw)


@dataclass
class Built:
    """A library's model, ready to be timed.

    Attributes:
        num_params: number of trainable scalars.
        description: one line on how the model was built (classes, options).
        versions: package name -> version of what was used.
        ops: operation name -> a callable running the operation once.
        unsupported: operation name -> why the library cannot run it.
    """

    num_params: int
    description: str
    versions: dict[str, str]
    ops: dict[str, Callable[[], None]]
    unsupported: dict[str, str] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """The JSON-serializable description sent to the driver."""
        return {
            "num_params": self.num_params,
            "description": self.description,
            "versions": self.versions,
            "ops": sorted(self.ops),
            "unsupported": self.unsupported,
        }


def random_data(cfg: Config) -> torch.Tensor:
    """The shared input batch: integer pixel values in ``[0, total_count]``, ``[batch, C, H, W]`` float32."""
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch, *cfg.image_shape)
    return torch.randint(0, cfg.total_count + 1, shape, generator=generator).float()


def train_step_op(params: list[torch.nn.Parameter], neg_log_likelihood: Callable[[], torch.Tensor]
                  ) -> Callable[[], None]:
    """One Adam step (default hyper-parameters) on ``neg_log_likelihood()``."""
    optimizer = torch.optim.Adam(params)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        neg_log_likelihood().backward()
        optimizer.step()

    return step


def backward_of_linear_op(module: torch.nn.Module, draw: Callable[[], torch.Tensor], cfg: Config
                          ) -> Callable[[], None]:
    """Draw differentiable samples ``[batch, C, H, W]`` and back-propagate a fixed random linear function of them
    (``Σ samples · w``, ``w`` standard normal, seeded by the config) into ``module``."""
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    weights = torch.randn((cfg.batch, *cfg.image_shape), generator=generator)

    def run() -> None:
        module.zero_grad(set_to_none=True)
        (draw().float().reshape(weights.shape) * weights).sum().backward()

    return run


def _status_kib(key: str) -> int:
    """A ``VmRSS``/``VmHWM`` style entry of ``/proc/self/status``, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def measure_memory(op: Callable[[], None]) -> dict[str, float]:
    """Peak resident memory that one (first) call of ``op`` adds, in MiB.

    The baseline is the resident set size right after model construction and input creation; the
    kernel's high-water mark is reset there (``/proc/self/clear_refs``), so the peak is that of the call
    alone. The driver starts these workers with a fixed glibc mmap threshold, so large tensors freed
    before the baseline are returned to the system and cannot hide the call's own allocations.
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current VmRSS
    baseline = _status_kib("VmRSS")
    op()
    peak = _status_kib("VmHWM")
    return {"baseline_mib": baseline / 1024, "peak_mib": peak / 1024, "delta_mib": (peak - baseline) / 1024}


def _protocol_stream() -> TextIO:
    """Keep the real stdout for the protocol and send anything else printed to stderr."""
    stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return stream


def serve(build: Callable[[Config], Built], cfg: Config, memory_op: str | None) -> None:
    """Build the model and answer the driver's commands (see the module docstring)."""
    proto = _protocol_stream()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    built = build(cfg)

    def send(message: dict[str, Any]) -> None:
        proto.write(json.dumps(message) + "\n")

    if memory_op is not None:
        send({"memory": measure_memory(built.ops[memory_op])})
        return
    send({"ready": built.info(), "torch_threads": torch.get_num_threads()})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return
        op = built.ops[command["op"]]
        try:
            if command.get("rewarm", False):
                op()
            start = time.perf_counter()
            op()
            send({"seconds": time.perf_counter() - start})
        except Exception as error:  # reported to the driver, which marks the operation as failed
            send({"error": f"{type(error).__name__}: {error}"})
