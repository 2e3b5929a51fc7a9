"""Speed and memory of pyro_spn against peer circuit libraries, on the paper's RAT-SPN, in one run.

Usage::

    python benchmarks/bench_circuit.py [--peer-python PYTHON] [--peers LIST] [--dsp-path DIR] [--repeats 7]
        [--batch 128] [--threads 2] [--cold] [--quick] [--json results.json]

Every library runs in its own worker process (``_worker.py``), ours with this interpreter and the peers with
``--peer-python`` (the paper's own code, peer ``dsp``, imported from the checkout ``--dsp-path``), all
pinned to ``--threads`` threads (``torch.set_num_threads`` and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``).
After one warm-up call per operation, the driver times the operations in interleaved rounds (every round
runs every operation of every library once, in a rotating library order), so that load on the machine
affects all libraries alike, and reports the median of ``--repeats`` rounds. Every timed call directly
follows an untimed call of the same operation in the same process, the state of a loop that repeats it (a
training loop), not that of a first call after the other operations (the soft samplers touch gigabytes;
``--cold`` times that state instead). Peak memory is measured separately, one fresh process per (library,
operation): the growth of the resident set size above the post-construction baseline during one call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from _common import OPERATION_LABELS, OPERATIONS, SETTLE_S, Config

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker.py"
OURS = "pyro_spn"
DSP = "dsp"
PEERS = ("spflow-rat", "spflow-einet", "cirkit", DSP)
QUICK = Config(image_shape=(1, 8, 8), depth=2, num_repetitions=2, num_sums=4, num_leaves=4, batch=16)
# A fixed mmap threshold turns off glibc's adaptive one, so that freed large tensors go back to the
# system at once and the resident set size follows the live tensors (memory measurements only).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


class WorkerError(RuntimeError):
    """A worker process exited or answered something unexpected."""


class Worker:
    """One library's worker process, driven over JSON lines."""

    def __init__(self, library: str, python: str, cfg: Config, env: dict[str, str],
                 memory_op: str | None = None, source: str | None = None) -> None:
        self.library = library
        self._stderr = tempfile.TemporaryFile(mode="w+")
        command = [python, str(WORKER), library, cfg.to_json()]
        if memory_op is not None:
            command += ["--memory", memory_op]
        if source is not None:
            command += ["--source", source]
        self._process = subprocess.Popen(command, cwd=HERE, env=env, text=True, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr)

    def receive(self) -> dict[str, Any]:
        """The next message; raises :class:`WorkerError` with the worker's stderr if there is none."""
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            self._stderr.seek(0)
            tail = self._stderr.read().strip().splitlines()[-3:]
            raise WorkerError(f"{self.library} worker exited ({self._process.returncode}): " + " | ".join(tail))
        return json.loads(line)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message) + "\n")
        self._process.stdin.flush()
        return self.receive()

    def close(self) -> None:
        """Ask the worker to exit and reap it."""
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self._process.stdin.close()
            self._process.wait()
        self._stderr.close()


@dataclass
class OpResult:
    """Measurements of one operation of one library."""

    times_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    memory: dict[str, float] | None = None
    unsupported: str | None = None
    error: str | None = None

    @property
    def runnable(self) -> bool:
        """Supported and not failed so far."""
        return self.unsupported is None and self.error is None


@dataclass
class LibResult:
    """Everything measured for one library (``source``: the checkout it is imported from, if not installed)."""

    python: str
    source: str | None = None
    info: dict[str, Any] | None = None
    error: str | None = None
    ops: dict[str, OpResult] = field(default_factory=lambda: {op: OpResult() for op in OPERATIONS})


def thread_env(threads: int) -> dict[str, str]:
    """The environment of the workers, pinned to ``threads`` threads."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def start_workers(results: dict[str, LibResult], cfg: Config, env: dict[str, str]) -> dict[str, Worker]:
    """Start every library's worker and record what it reports about its model."""
    workers = {}
    for library, result in results.items():
        if result.error is not None:
            continue
        worker = Worker(library, result.python, cfg, env, source=result.source)
        try:
            result.info = worker.receive()["ready"]
        except WorkerError as error:
            result.error = str(error)
            worker.close()
            continue
        for op, reason in result.info["unsupported"].items():
            result.ops[op].unsupported = reason
        for op in OPERATIONS:
            if op not in result.info["ops"] and result.ops[op].unsupported is None:
                result.ops[op].unsupported = "not provided by the adapter"
        workers[library] = worker
    return workers


def time_once(worker: Worker, op_result: OpResult, op: str, rewarm: bool) -> float | None:
    """One timed call (after ``SETTLE_S`` of quiet, and an untimed call if ``rewarm``); records a failure in
    ``op_result`` and returns None if it raised."""
    time.sleep(SETTLE_S)
    answer = worker.request({"cmd": "time", "op": op, "rewarm": rewarm})
    if "error" in answer:
        op_result.error = answer["error"]
        return None
    return float(answer["seconds"])


def run_timings(results: dict[str, LibResult], workers: dict[str, Worker], repeats: int, cold: bool) -> None:
    """One warm-up call per operation, then ``repeats`` interleaved rounds (each timed call after an untimed
    one of the same operation unless ``cold``); fills the medians."""
    libraries = list(workers)
    for library in libraries:
        for op in OPERATIONS:
            if results[library].ops[op].runnable:
                time_once(workers[library], results[library].ops[op], op, rewarm=False)
    for round_index in range(repeats):
        shift = round_index % len(libraries)
        order = libraries[shift:] + libraries[:shift]
        for op in OPERATIONS:
            for library in order:
                op_result = results[library].ops[op]
                if op_result.runnable:
                    seconds = time_once(workers[library], op_result, op, rewarm=not cold)
                    if seconds is not None:
                        op_result.times_s.append(seconds)
        print(f"  round {round_index + 1}/{repeats} done", file=sys.stderr, flush=True)
    for result in results.values():
        for op_result in result.ops.values():
            if op_result.runnable and op_result.times_s:
                op_result.median_s = statistics.median(op_result.times_s)


def run_memory(results: dict[str, LibResult], cfg: Config, env: dict[str, str]) -> None:
    """Peak memory of one call per (library, operation), each in a fresh process."""
    memory_env = {**env, **MALLOC_ENV}
    for library, result in results.items():
        if result.info is None:
            continue
        for op in OPERATIONS:
            op_result = result.ops[op]
            if not op_result.runnable:
                continue
            worker = Worker(library, result.python, cfg, memory_env, memory_op=op, source=result.source)
            try:
                op_result.memory = worker.receive()["memory"]
            except WorkerError as error:
                op_result.error = f"memory run: {error}"
            worker.close()


def ratio(results: dict[str, LibResult], peer: str, op: str) -> float | None:
    """Peer median over our median (> 1: we are faster), or None if either is missing."""
    ours = results[OURS].ops[op].median_s
    theirs = results[peer].ops[op].median_s
    return theirs / ours if ours and theirs else None


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000.0 * seconds


def describe_config(cfg: Config, repeats: int, cold: bool) -> str:
    """The heading lines: workload and measurement protocol."""
    channels, height, width = cfg.image_shape
    return (f"Workload: {cfg.num_features} variables ({channels}x{height}x{width}), Binomial(total_count="
            f"{cfg.total_count}) leaves, RAT-SPN random binary trees of depth {cfg.depth}, "
            f"{cfg.num_repetitions} repetitions, {cfg.num_sums} sum units and {cfg.num_leaves} leaf components "
            f"per region, batch {cfg.batch}, float32, CPU, {cfg.threads} threads.\n"
            f"Time: median of {repeats} interleaved rounds after 1 warm-up call, each timed call "
            f"{'right after the other operations' if cold else 'right after an untimed call of the same operation'}"
            f", in ms; ratio = peer / {OURS} (> 1: {OURS} is faster).\n"
            "Memory: peak RSS growth (MiB) during one call right after construction, fresh process per "
            "cell (includes first-call allocations such as Adam's state).")


def format_report(results: dict[str, LibResult], cfg: Config, repeats: int, cold: bool) -> str:
    """The human-readable report: configuration, models, one table, and the n/a reasons."""
    libraries = [lib for lib, result in results.items() if result.info is not None]
    peers = [lib for lib in libraries if lib != OURS]
    lines = [describe_config(cfg, repeats, cold), "", "Models:"]
    for library, result in results.items():
        if result.info is None:
            lines.append(f"  {library}: not run ({result.error})")
            continue
        versions = ", ".join(f"{name} {ver}" for name, ver in result.info["versions"].items())
        lines.append(f"  {library}: {result.info['num_params']:,} parameters; {result.info['description']}; "
                     f"{versions}")

    width = max(len(label) for label in OPERATION_LABELS.values())
    header = [f"{'operation':<{width}}", f"{OURS:>10}"]
    for peer in peers:
        header += [f"{peer:>12}", f"{'ratio':>6}"]
    header += [f"{'MiB ' + lib:>{max(10, len(lib) + 4)}}" for lib in libraries]
    lines += ["", "  ".join(header), "-" * len("  ".join(header))]
    notes: dict[str, list[str]] = {}
    for op in OPERATIONS:
        row = [f"{OPERATION_LABELS[op]:<{width}}", f"{_cell(_ms(results[OURS].ops[op].median_s), '.1f'):>10}"]
        for peer in peers:
            row += [f"{_cell(_ms(results[peer].ops[op].median_s), '.1f'):>12}",
                    f"{_cell(ratio(results, peer, op), '.2f'):>6}"]
        for lib in libraries:
            op_result = results[lib].ops[op]
            delta = op_result.memory["delta_mib"] if op_result.memory else None
            row.append(f"{_cell(delta, '.0f'):>{max(10, len(lib) + 4)}}")
            reason = op_result.unsupported or op_result.error
            if reason is not None:
                notes.setdefault(f"{lib}: {reason}", []).append(op)
        lines.append("  ".join(row))
    if notes:
        lines += ["", "n/a:"]
        lines += [f"  {', '.join(ops)} -- {reason}" for reason, ops in notes.items()]
    return "\n".join(lines)


def match_note(results: dict[str, LibResult], cfg: Config) -> str:
    """A sentence on how the models correspond, with a check of the parameter counts."""
    counts = {lib: result.info["num_params"] for lib, result in results.items() if result.info is not None}
    same = len(set(counts.values())) == 1
    regions = 2**cfg.depth
    return (
        f"How the configurations match: every model is a RAT-SPN over the same {cfg.num_features} variables "
        f"with depth-{cfg.depth} random balanced binary splits per repetition ({regions} leaf regions of "
        f"~{cfg.num_features // regions} variables), {cfg.num_leaves} Binomial({cfg.total_count}) components "
        f"per variable and leaf region, {cfg.num_sums} sum units per inner region, each a mixture over the "
        f"{cfg.num_sums}x{cfg.num_sums} products of its two children (a fused einsum in pyro_spn, spflow-einet, "
        "cirkit's 'tucker' layer and the paper's code; outer product + sum layer in spflow-rat), one unit per "
        f"tree at the top and a mixture over the {cfg.num_repetitions} repetitions at the root; parameter counts are "
        + ("identical" if same else "NOT identical: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        + ". Random partitions and initial values differ between libraries (each has its own generator); "
        "the cost does not depend on them."
    )


def main() -> None:
    """Parse options, run all measurements, print the table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", type=Path, default=Path(sys.executable),
                        help="python with the peers installed (default: this one, where `pip install -e .[bench]` "
                             "puts them; or a separate virtual environment's)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS))
    parser.add_argument("--dsp-path", type=Path, metavar="DIR",
                        help=f"checkout of github.com/ml-research/differentiable-sampling-pc, the paper's code (peer "
                             f"{DSP}, run with --peer-python); without it {DSP} is skipped")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, help="batch size (default 128, or 16 with --quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny configuration, to smoke-test the script")
    parser.add_argument("--cold", action="store_true",
                        help="time each call right after the other operations, not after a call of the same one")
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    args = parser.parse_args()

    cfg = QUICK if args.quick else Config()
    cfg = replace(cfg, threads=args.threads, batch=args.batch or cfg.batch)
    peers = [peer.strip() for peer in args.peers.split(",") if peer.strip()]
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")

    results = {OURS: LibResult(python=sys.executable)}
    for peer in peers:
        results[peer] = LibResult(python=str(args.peer_python))
    if DSP in peers:
        if args.dsp_path is None:
            results[DSP].error = "skipped: no --dsp-path (a checkout of ml-research/differentiable-sampling-pc)"
            print(f"{DSP}: {results[DSP].error}", file=sys.stderr, flush=True)
        elif not (args.dsp_path / "simple_einet" / "einet.py").is_file():
            parser.error(f"--dsp-path {args.dsp_path} has no simple_einet/einet.py (give the repository's root)")
        else:
            results[DSP].source = str(args.dsp_path.resolve())
    env = thread_env(cfg.threads)

    print("starting workers ...", file=sys.stderr, flush=True)
    workers = start_workers(results, cfg, env)
    try:
        if OURS not in workers:
            sys.exit(f"cannot run {OURS}: {results[OURS].error}")
        run_timings(results, workers, args.repeats, args.cold)
    finally:
        for worker in workers.values():
            worker.close()
    print("measuring memory (one fresh process per cell) ...", file=sys.stderr, flush=True)
    run_memory(results, cfg, env)

    print(format_report(results, cfg, args.repeats, args.cold))
    print()
    print(match_note(results, cfg))
    if args.json is not None:
        payload = {
            "config": asdict(cfg),
            "repeats": args.repeats,
            "cold": args.cold,
            "libraries": {lib: asdict(result) for lib, result in results.items()},
            "ratios": {peer: {op: ratio(results, peer, op) for op in OPERATIONS}
                       for peer in peers if results[peer].info is not None},
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
