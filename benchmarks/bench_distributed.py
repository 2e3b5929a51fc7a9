"""Data-parallel scaling of ``pyrospn-train``: the same run on 1 and on N processes (``torchrun``, gloo, loopback
address), seconds per epoch and the speed-up ratio.

Every process runs ``--threads`` intra-op threads (default 1), so 2 processes use twice the cores of 1; the global
batch (``--batch-size``) is the same, so each of N processes computes 1/N of every batch. The time of an epoch is the
trainer's own (``seconds`` in ``metrics.jsonl``: training and validation, not the start-up); the first epoch is a
warm-up and the median of the others is reported.

    python benchmarks/bench_distributed.py                        # ll and adv, 1 vs 2 processes
    python benchmarks/bench_distributed.py --objectives ll --processes 1,2,4 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def epoch_seconds(objective: str, processes: int, args: argparse.Namespace, folder: Path) -> float:
    """The median seconds per epoch (after the first) of a run of ``objective`` on ``processes`` processes."""
    output = folder / f"{objective}-{processes}"
    train = str(Path(sys.executable).parent / "pyrospn-train")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", train,
               "--objective", objective, "--dataset", args.dataset, "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--max-batches-per-epoch", str(args.batches),
               "--repetitions", str(args.repetitions), "--sums", str(args.sums), "--leaves", str(args.leaves),
               "--num-final-samples", "16", "--device", "cpu", "--no-progress", "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "passive",
           "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(record["seconds"] for record in records[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", default="ll,adv", help="comma-separated objectives")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (the first is the base)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--batches", type=int, default=10, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (the first is a warm-up)")
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--sums", type=int, default=10)
    parser.add_argument("--leaves", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    print(f"# {args.dataset}, global batch {args.batch_size}, {args.batches} batches/epoch, R={args.repetitions} "
          f"K={args.sums} I={args.leaves}, {args.threads} thread(s) per process, CPU, gloo")
    print("| objective | processes | s / epoch | speed-up |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as temp:
        for objective in args.objectives.split(","):
            base = None
            for count in counts:
                seconds = epoch_seconds(objective, count, args, Path(temp))
                base = seconds if base is None else base
                print(f"| {objective} | {count} | {seconds:.3f} | {base / seconds:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
