"""How pyro_spn's cost grows with the batch size and with the number of variables (to show it is linear).

Usage::

    python benchmarks/bench_scaling.py [--repeats 5] [--threads 2] [--batches 32,64,128,256,512]
        [--sizes 14,28,42,56] [--quick] [--json results.json] [--plot DIR]

The model is the paper's RAT-SPN (``Config``: Binomial(255) leaves, depth 4, 10 repetitions, 20 sums and
20 leaves per region), the operations are those of ``bench_circuit.py`` (``_ours.py``): log-likelihood
without grad, forward + backward + Adam step, exact ``sample``, straight-through ``rsample`` + backward and the soft
``rsample`` (per unit and per region, τ = 0.5) + backward.
Two sweeps: the batch size at 28x28 variables, and the image side ``s`` (event shape ``(1, s, s)``) at
batch 128. Every point runs in its own worker process (``_worker.py``), pinned to ``--threads`` threads;
after one warm-up call per operation, the points of a sweep are timed in interleaved rounds (every round
times every operation at every point once, in a rotating order) and the median of ``--repeats`` rounds is
reported, with a least-squares line ``time = slope * x + intercept`` per operation and its R².
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from _common import (
    LOG_PROB,
    OPERATION_LABELS,
    RSAMPLE_SOFT_REGION,
    RSAMPLE_SOFT_UNIT,
    RSAMPLE_ST,
    SAMPLE,
    SETTLE_S,
    TRAIN_STEP,
    Config,
)
from bench_circuit import QUICK, Worker, WorkerError, thread_env

OURS = "pyro_spn"
SCALING_OPS = (LOG_PROB, TRAIN_STEP, SAMPLE, RSAMPLE_ST, RSAMPLE_SOFT_UNIT, RSAMPLE_SOFT_REGION)
SHORT_LABELS = {LOG_PROB: "log-lik", TRAIN_STEP: "train step", SAMPLE: "sample", RSAMPLE_ST: "rsample-st + bwd",
                RSAMPLE_SOFT_UNIT: "soft unit + bwd", RSAMPLE_SOFT_REGION: "soft region + bwd"}
BATCHES = (32, 64, 128, 256, 512)
SIDES = (14, 28, 42, 56)
QUICK_BATCHES = (8, 16, 32)
QUICK_SIDES = (8, 12, 16)
# Pause before every timed call: after a parallel region, libgomp's threads busy-wait for a while
# (GOMP_SPINCOUNT), and if the worker that ran last still spins on the cores, the next worker's threads
# are descheduled at every barrier (tens of ms per call on 2 cores).
# Sweep name -> (unit of x, its abbreviation, axis label).
UNITS = {"batch": ("example", "ex", "batch size (examples)"), "variables": ("variable", "var", "number of variables")}


@dataclass
class Fit:
    """Least-squares line ``time = slope * x + intercept`` (seconds) and its coefficient of determination."""

    slope: float
    intercept: float
    r2: float


@dataclass
class Sweep:
    """One sweep: a configuration per point, and the timings of every operation at every point.

    Attributes:
        name: ``"batch"`` or ``"variables"``.
        x_label: what ``x`` counts (``"examples"`` or ``"variables"``).
        x: the swept quantity at every point.
        configs: the workload at every point.
        times_s: operation -> one list of round times (seconds) per point.
        fits: operation -> line through the medians (only with at least two points).
        errors: operation -> the first error a worker reported for it.
    """

    name: str
    x_label: str
    x: list[int]
    configs: list[Config]
    times_s: dict[str, list[list[float]]] = field(default_factory=dict)
    fits: dict[str, Fit] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def medians(self, op: str) -> list[float]:
        """Median time (seconds) of ``op`` at every point."""
        return [statistics.median(times) for times in self.times_s[op]]

    def timed_ops(self) -> list[str]:
        """The operations that ran without error at every point."""
        return [op for op in SCALING_OPS if op not in self.errors]


def linear_fit(x: list[int], y: list[float]) -> Fit:
    """Ordinary least squares of ``y`` on ``x`` (at least two distinct ``x``)."""
    slope, intercept = statistics.linear_regression(x, y)
    mean = statistics.fmean(y)
    total = sum((value - mean) ** 2 for value in y)
    residual = sum((value - (slope * xi + intercept)) ** 2 for xi, value in zip(x, y, strict=True))
    return Fit(slope=slope, intercept=intercept, r2=1.0 - residual / total if total > 0 else 1.0)


def batch_sweep(base: Config, batches: list[int]) -> Sweep:
    """The batch sizes ``batches`` at the variables of ``base``."""
    return Sweep("batch", "examples", list(batches), [replace(base, batch=batch) for batch in batches])


def variables_sweep(base: Config, sides: list[int]) -> Sweep:
    """Images of ``1 x side x side`` variables at the batch size of ``base``."""
    configs = [replace(base, image_shape=(1, side, side)) for side in sides]
    return Sweep("variables", "variables", [cfg.num_features for cfg in configs], configs)


def run_sweep(sweep: Sweep, repeats: int) -> dict[str, str]:
    """Time every operation at every point of ``sweep`` (fills ``times_s``, ``fits``, ``errors``).

    Returns:
        the versions reported by the workers (package -> version).
    """
    env = thread_env(sweep.configs[0].threads)
    workers = []
    versions: dict[str, str] = {}
    try:
        workers.extend(Worker(OURS, sys.executable, cfg, env) for cfg in sweep.configs)
        for worker in workers:
            versions = worker.receive()["ready"]["versions"]
        sweep.times_s = {op: [[] for _ in workers] for op in SCALING_OPS}

        def time_once(point: int, op: str) -> float | None:
            time.sleep(SETTLE_S)
            answer = workers[point].request({"cmd": "time", "op": op})
            if "error" in answer:
                sweep.errors.setdefault(op, f"{sweep.x_label}={sweep.x[point]}: {answer['error']}")
                return None
            return float(answer["seconds"])

        for point in range(len(workers)):  # warm-up
            for op in SCALING_OPS:
                time_once(point, op)
        points = list(range(len(workers)))
        for round_index in range(repeats):
            shift = round_index % len(points)
            for op in sweep.timed_ops():
                for point in points[shift:] + points[:shift]:
                    seconds = time_once(point, op)
                    if seconds is not None:
                        sweep.times_s[op][point].append(seconds)
            print(f"  {sweep.name} sweep: round {round_index + 1}/{repeats} done", file=sys.stderr, flush=True)
    finally:
        for worker in workers:
            worker.close()
    for op in sweep.timed_ops():
        if len(set(sweep.x)) >= 2:
            sweep.fits[op] = linear_fit(sweep.x, sweep.medians(op))
    return versions


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_model(cfg: Config) -> str:
    """The circuit, without the swept quantities."""
    return (f"RAT-SPN depth {cfg.depth}, R={cfg.num_repetitions}, K={cfg.num_sums} sums, "
            f"I={cfg.num_leaves} leaves, Binomial({cfg.total_count})")


def describe_machine(threads: int, versions: dict[str, str]) -> str:
    """CPU, threads and library versions, for headings and plot titles."""
    return f"{cpu_name()}, {threads} threads, " + ", ".join(f"{name} {ver}" for name, ver in versions.items())


def format_sweep(sweep: Sweep) -> str:
    """The table of one sweep (median ms and us per unit of ``x``) and its linear fits."""
    per, abbr, _ = UNITS[sweep.name]
    cfg = sweep.configs[0]
    if sweep.name == "batch":
        fixed = f"{cfg.num_features} variables (1x{cfg.image_shape[1]}x{cfg.image_shape[2]})"
    else:
        fixed = f"batch {cfg.batch}"
    lines = [f"{sweep.name.capitalize()} sweep at {fixed}: median ms, and us per {per}"]
    ops = sweep.timed_ops()
    header = [f"{sweep.x_label:>10}"] + [f"{SHORT_LABELS[op] + ' ms':>20}  {'us/' + abbr:>9}" for op in ops]
    lines += ["  ".join(header), "-" * len("  ".join(header))]
    for point, x in enumerate(sweep.x):
        row = [f"{x:>10}"]
        for op in ops:
            median = statistics.median(sweep.times_s[op][point])
            row.append(f"{1e3 * median:>20.2f}  {1e6 * median / x:>9.2f}")
        lines.append("  ".join(row))
    if sweep.fits:
        width = max(len(OPERATION_LABELS[op]) for op in sweep.fits)
        lines += ["", f"Least-squares fit time = slope * {sweep.x_label} + intercept:",
                  f"{'operation':<{width}}  {'slope us/' + abbr:>14}  {'intercept ms':>12}  {'R^2':>8}"]
        for op, fit in sweep.fits.items():
            lines.append(f"{OPERATION_LABELS[op]:<{width}}  {1e6 * fit.slope:>14.3f}  {1e3 * fit.intercept:>12.2f}  "
                         f"{fit.r2:>8.5f}")
    lines += [f"{OPERATION_LABELS[op]}: failed ({error})" for op, error in sweep.errors.items()]
    return "\n".join(lines)


def plot_sweep(sweep: Sweep, path: Path, machine: str, repeats: int) -> None:
    """Write a PNG: median times with the fitted lines (left) and time per unit of ``x`` (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per, abbr, x_label = UNITS[sweep.name]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    span = [0, max(sweep.x) * 1.05]
    for op in sweep.timed_ops():
        medians_ms = [1e3 * t for t in sweep.medians(op)]
        (points,) = left.plot(sweep.x, medians_ms, "o", label=OPERATION_LABELS[op])
        if op in sweep.fits:
            fit = sweep.fits[op]
            left.plot(span, [1e3 * (fit.slope * x + fit.intercept) for x in span], "--", color=points.get_color(),
                      label=f"fit: {1e6 * fit.slope:.3g} us/{abbr} + {1e3 * fit.intercept:.3g} ms, "
                            f"R²={fit.r2:.4f}")
        per_unit_us = [1e3 * ms / x for ms, x in zip(medians_ms, sweep.x, strict=True)]
        right.plot(sweep.x, per_unit_us, "o-", color=points.get_color(), label=OPERATION_LABELS[op])
    left.set(xlabel=x_label, ylabel="median time (ms)", xlim=span, ylim=(0, None),
             title="time, with least-squares lines")
    right.set(xlabel=x_label, ylabel=f"median time per {per} (us)", xlim=span, ylim=(0, None),
              title=f"time per {per}")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    cfg = sweep.configs[0]
    what, fixed = (("batch size", f"{cfg.num_features} variables") if sweep.name == "batch"
                   else ("number of variables", f"batch {cfg.batch}"))
    figure.suptitle(f"pyro_spn time vs {what} ({fixed}; {describe_model(cfg)}; float32 CPU)\n"
                    f"{machine}; median of {repeats} rounds", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_ints(text: str) -> list[int]:
    """``"32,64,128"`` -> ``[32, 64, 128]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    """Parse options, run both sweeps, print the tables and optionally write JSON and plots."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=parse_ints,
                        help=f"batch sweep (default {','.join(map(str, BATCHES))}; with --quick "
                             f"{','.join(map(str, QUICK_BATCHES))})")
    parser.add_argument("--sizes", type=parse_ints,
                        help=f"image sides s of the variables sweep, event shape (1, s, s) (default "
                             f"{','.join(map(str, SIDES))}; with --quick {','.join(map(str, QUICK_SIDES))})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny circuit (bench_circuit.py's --quick) and small sweeps, to smoke-test the script")
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    parser.add_argument("--plot", type=Path, metavar="DIR",
                        help="write scaling_batch.png and scaling_variables.png to DIR (needs matplotlib)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    base = replace(QUICK if args.quick else Config(), threads=args.threads)
    batches = args.batches or list(QUICK_BATCHES if args.quick else BATCHES)
    sides = args.sizes or list(QUICK_SIDES if args.quick else SIDES)
    sweeps = [batch_sweep(base, batches), variables_sweep(base, sides)]
    versions: dict[str, str] = {}
    for sweep in sweeps:
        print(f"{sweep.name} sweep: starting {len(sweep.configs)} workers ...", file=sys.stderr, flush=True)
        try:
            versions = run_sweep(sweep, args.repeats)
        except WorkerError as error:
            sys.exit(f"cannot run the {sweep.name} sweep: {error}")

    machine = describe_machine(args.threads, versions)
    print(f"{describe_model(base)}, float32, CPU. Machine: {machine}.")
    print(f"Time: median of {args.repeats} interleaved rounds after 1 warm-up call, one worker process per point.")
    for sweep in sweeps:
        print()
        print(format_sweep(sweep))
    if args.json is not None:
        payload: dict[str, Any] = {
            "machine": machine,
            "repeats": args.repeats,
            "sweeps": {sweep.name: {"x_label": sweep.x_label, "x": sweep.x,
                                    "configs": [asdict(cfg) for cfg in sweep.configs],
                                    "times_s": sweep.times_s,
                                    "median_s": {op: sweep.medians(op) for op in sweep.timed_ops()},
                                    "fits": {op: asdict(fit) for op, fit in sweep.fits.items()},
                                    "errors": sweep.errors}
                       for sweep in sweeps},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    if args.plot is not None:
        args.plot.mkdir(parents=True, exist_ok=True)
        for sweep in sweeps:
            plot_sweep(sweep, args.plot / f"scaling_{sweep.name}.png", machine, args.repeats)


if __name__ == "__main__":
    main()
