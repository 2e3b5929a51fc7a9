"""Achieved FLOP rate of pyro_spn's einsum layers against this machine's fp32 matmul rate.

Usage::

    python benchmarks/bench_flops.py [--threads 2] [--batch 128] [--matmul-size 2048] [--repeats 7]
        [--pytorch-path] [--quick] [--json results.json]

1. Matmul rate: ``torch.matmul`` of two ``n x n`` float32 matrices (``--matmul-size``), and batched
   matmuls of each einsum layer's shapes, ``[R*L, K_out, K_in^2] @ [R*L, K_in^2, N]`` (the CPU path's layout,
   "bmm"; the layer runs it in chunks of groups) and ``[R*L, N, K_in^2] @ [R*L, K_in^2, K_out]`` (the GPU
   path's layout), in GFLOP/s with ``2*m*n*k`` FLOPs per product.
2. Every ``EinsumLayer`` of the paper's RAT-SPN (``Config``) alone, on the inputs it sees in the model's
   upward pass over the benchmark batch: forward under ``torch.no_grad()``, and forward + backward of
   ``output.sum()`` into its weights and input. FLOPs: "matmul" = ``2*N*R*L*K_in^2*K_out``, "all" =
   matmul + the ``N*R*L*K_in^2`` multiplies of the outer product (exp, log and max are not counted);
   forward + backward counts 3x the forward's FLOPs.
   The layers run the native kernel (``pyro_spn.native``) where it builds, or with ``--pytorch-path`` their
   PyTorch path (products of pairs in chunks, then a batched matmul); the report says which.
3. The whole model's log-likelihood (the ``_ours.py`` operation of ``bench_circuit.py``) against its FLOP
   floor: the leaf matmul (``2*N*C*F*S*I*R``, ``S`` sufficient statistics) plus the einsum layers' "all"
   FLOPs, at the square-matmul rate.

Times are medians of ``--repeats`` rounds after a warm-up call; every round times one block of every
measurement above in turn (so that a slower or busier phase of the machine affects the matmul rate and the
layers alike), and a block repeats its call until it takes at least ``--min-block`` seconds and counts the
mean. The process pins itself to ``--threads`` threads
(``torch.set_num_threads``, and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` by re-executing itself).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from _common import LOG_PROB, Config, random_data
from _ours import build
from bench_circuit import QUICK, thread_env
from bench_scaling import describe_machine, describe_model

from pyro_spn import RatSPN, native
from pyro_spn.layers import EinsumLayer
from pyro_spn.leaves import Binomial


@dataclass
class LayerResult:
    """Shapes, FLOPs and timings of one einsum layer (times in seconds, rates in GFLOP/s)."""

    regions: int
    inputs: int
    outputs: int
    matmul_flops: int
    all_flops: int
    bmm_s: float
    bmm_gflops: float
    bmm_gpu_layout_s: float
    forward_s: float
    backward_s: float

    def forward_gflops(self, flops: int) -> float:
        """``flops`` per forward time."""
        return flops / self.forward_s / 1e9

    def backward_gflops(self) -> float:
        """3x the "all" FLOPs per forward + backward time."""
        return 3 * self.all_flops / self.backward_s / 1e9


def pin_threads(threads: int) -> None:
    """Run with ``threads`` threads: re-execute this script with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set
    (they are read when the libraries load) unless they already are, then ``torch.set_num_threads``."""
    env = thread_env(threads)
    if any(os.environ.get(key) != env[key] for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(threads)


class Timer:
    """Seconds per call of ``fn``: calibrated once (a warm-up call, then a call that sets how many calls make a
    block of at least ``min_block`` seconds), then timed one block per :meth:`block` call."""

    def __init__(self, fn: Callable[[], object], min_block: float) -> None:
        self.fn = fn
        fn()
        start = time.perf_counter()
        fn()
        self.number = max(1, math.ceil(min_block / max(time.perf_counter() - start, 1e-9)))
        self.per_call: list[float] = []

    def block(self) -> None:
        """Time one block and record its mean seconds per call."""
        start = time.perf_counter()
        for _ in range(self.number):
            self.fn()
        self.per_call.append((time.perf_counter() - start) / self.number)

    @property
    def median(self) -> float:
        """Median over the blocks so far."""
        return statistics.median(self.per_call)


def matmul_timer(a_shape: tuple[int, ...], b_shape: tuple[int, ...], min_block: float) -> Timer:
    """Times ``torch.matmul`` of random float32 matrices (or batches of them) of these shapes."""
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    return Timer(lambda: torch.matmul(a, b), min_block)


class LayerTimers:
    """The timers of one einsum layer on its input ``x`` ``[N, R, 2L, K_in]``: its matmul shapes alone, its
    forward without grad, and forward + backward of ``output.sum()`` into its weights and input."""

    def __init__(self, layer: EinsumLayer, x: torch.Tensor, min_block: float) -> None:
        self.layer, self.num_samples = layer, x.shape[0]
        k_in, k_out, groups = layer.num_inputs, layer.num_outputs, layer.num_repetitions * layer.num_regions
        self.bmm = matmul_timer((groups, k_out, k_in**2), (groups, k_in**2, x.shape[0]), min_block)
        self.bmm_gpu_layout = matmul_timer((groups, x.shape[0], k_in**2), (groups, k_in**2, k_out), min_block)

        def forward() -> None:
            with torch.no_grad():
                layer(x)

        x_grad = x.clone().requires_grad_(True)

        def forward_backward() -> None:
            layer.zero_grad(set_to_none=True)
            x_grad.grad = None
            layer(x_grad).sum().backward()

        self.forward, self.forward_backward = Timer(forward, min_block), Timer(forward_backward, min_block)

    def timers(self) -> list[Timer]:
        """All four, in the order they run in a round."""
        return [self.bmm, self.bmm_gpu_layout, self.forward, self.forward_backward]

    def result(self) -> LayerResult:
        """Medians and FLOPs."""
        layer, n = self.layer, self.num_samples
        groups = layer.num_repetitions * layer.num_regions  # R * L independent matmuls
        matmul_flops = 2 * n * groups * layer.num_inputs**2 * layer.num_outputs
        return LayerResult(regions=layer.num_regions, inputs=layer.num_inputs, outputs=layer.num_outputs,
                           matmul_flops=matmul_flops, all_flops=matmul_flops + n * groups * layer.num_inputs**2,
                           bmm_s=self.bmm.median, bmm_gflops=matmul_flops / self.bmm.median / 1e9,
                           bmm_gpu_layout_s=self.bmm_gpu_layout.median, forward_s=self.forward.median,
                           backward_s=self.forward_backward.median)


def leaf_flops(spn: RatSPN, x: torch.Tensor) -> int:
    """FLOPs of the leaf layer's matmul of sufficient statistics with natural parameters, without padding:
    ``2*N*C*F*S*I*R``."""
    num_stats = spn.leaf.sufficient_statistics(spn.flatten_data(x[:1])).shape[-1]
    return 2 * x.shape[0] * spn.num_channels * spn.num_features * num_stats * spn.num_leaves * spn.num_repetitions


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%"


def format_report(cfg: Config, square: tuple[int, float], layers: list[LayerResult], model: dict[str, float],
                  machine: str, repeats: int) -> str:
    """The human-readable report: matmul rates, the per-layer table and the whole model."""
    size, square_s = square
    gemm = 2 * size**3 / square_s / 1e9
    lines = [f"{describe_model(cfg)}, {cfg.num_features} variables, batch {cfg.batch}, float32, CPU.",
             f"Machine: {machine}. Times: median of {repeats} interleaved rounds after warm-up.", "",
             "fp32 matmul rate (2*m*n*k FLOPs):",
             f"  square [{size}, {size}] @ [{size}, {size}]: {1e3 * square_s:.2f} ms, {gemm:.1f} GFLOP/s  (= 'gemm')"]
    for index, layer in enumerate(layers, 1):
        batch = cfg.num_repetitions * layer.regions
        lines.append(f"  layer {index} CPU-layout shape [{batch}, {layer.outputs}, {layer.inputs ** 2}] @ "
                     f"[{batch}, {layer.inputs ** 2}, {cfg.batch}]: {1e3 * layer.bmm_s:.3f} ms, "
                     f"{layer.bmm_gflops:.3g} GFLOP/s ({_pct(layer.bmm_gflops, gemm)} of gemm)  (= 'bmm')")
        gpu_layout = layer.matmul_flops / layer.bmm_gpu_layout_s / 1e9
        lines.append(f"  layer {index} GPU-layout shape [{batch}, {cfg.batch}, {layer.inputs ** 2}] @ "
                     f"[{batch}, {layer.inputs ** 2}, {layer.outputs}]: {1e3 * layer.bmm_gpu_layout_s:.3f} ms, "
                     f"{gpu_layout:.3g} GFLOP/s ({_pct(gpu_layout, gemm)} of gemm)")

    header = (f"{'layer':>5} {'L':>3} {'K_in>K_out':>10} {'matmul MF':>9} {'all MF':>8} | {'fwd ms':>8} "
              f"{'GF/s mm':>8} {'GF/s all':>8} {'%gemm':>6} {'%bmm':>6} | {'f+b ms':>8} {'GF/s 3x':>8} "
              f"{'%gemm':>6} {'%bmm':>6}")
    lines += ["", "Einsum layers alone (MF = MFLOP; GF/s mm / all = matmul / all FLOPs per time; %gemm and %bmm: "
              "the 'all' rate over the matmul rates above; f+b = forward + backward, 3x 'all' FLOPs):",
              header, "-" * len(header)]
    for index, layer in enumerate(layers, 1):
        all_rate = layer.forward_gflops(layer.all_flops)
        lines.append(
            f"{index:>5} {layer.regions:>3} {f'{layer.inputs}>{layer.outputs}':>10} {layer.matmul_flops / 1e6:>9.4g} "
            f"{layer.all_flops / 1e6:>8.4g} | {1e3 * layer.forward_s:>8.3f} "
            f"{layer.forward_gflops(layer.matmul_flops):>8.3g} {all_rate:>8.3g} {_pct(all_rate, gemm):>6} "
            f"{_pct(all_rate, layer.bmm_gflops):>6} | {1e3 * layer.backward_s:>8.3f} {layer.backward_gflops():>8.3g} "
            f"{_pct(layer.backward_gflops(), gemm):>6} {_pct(layer.backward_gflops(), layer.bmm_gflops):>6}")
    matmul_flops = sum(layer.matmul_flops for layer in layers)
    all_flops = sum(layer.all_flops for layer in layers)
    forward_s = sum(layer.forward_s for layer in layers)
    backward_s = sum(layer.backward_s for layer in layers)
    bmm_s = sum(layer.bmm_s for layer in layers)
    bmm_gflops = matmul_flops / bmm_s / 1e9
    all_rate = all_flops / forward_s / 1e9
    backward_rate = 3 * all_flops / backward_s / 1e9
    lines.append(
        f"{'sum':>5} {'':>3} {'':>10} {matmul_flops / 1e6:>9.4g} {all_flops / 1e6:>8.4g} | {1e3 * forward_s:>8.3f} "
        f"{matmul_flops / forward_s / 1e9:>8.3g} {all_rate:>8.3g} {_pct(all_rate, gemm):>6} "
        f"{_pct(all_rate, bmm_gflops):>6} | {1e3 * backward_s:>8.3f} {backward_rate:>8.3g} "
        f"{_pct(backward_rate, gemm):>6} {_pct(backward_rate, bmm_gflops):>6}")

    total_flops = model["leaf_flops"] + all_flops
    floor_s = total_flops / (gemm * 1e9)
    lines += ["", "Whole model, log-likelihood without grad (bench_circuit.py's operation):",
              f"  time {1e3 * model['log_prob_s']:.2f} ms; {total_flops / 1e6:.4g} MFLOP (leaves "
              f"{model['leaf_flops'] / 1e6:.4g} + einsum layers {all_flops / 1e6:.4g}); floor at the gemm rate "
              f"{1e3 * floor_s:.3g} ms = {_pct(floor_s, model['log_prob_s'])} of the time "
              f"({total_flops / model['log_prob_s'] / 1e9:.3g} GFLOP/s achieved)",
              f"  the einsum layers' forward times add up to {_pct(forward_s, model['log_prob_s'])} of that time"]
    return "\n".join(lines)


def main() -> None:
    """Parse options, pin the threads and measure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, help="batch size N (default 128, or 16 with --quick)")
    parser.add_argument("--matmul-size", type=int, help="n of the square matmul (default 2048, or 256 with --quick)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-block", type=float, help="seconds per timed block (default 0.05, or 0.005 with --quick)")
    parser.add_argument("--pytorch-path", action="store_true",
                        help="run the einsum layers' PyTorch path instead of the native kernel")
    parser.add_argument("--quick", action="store_true",
                        help="tiny circuit (bench_circuit.py's --quick) and sizes, to smoke-test the script")
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    pin_threads(args.threads)
    if args.pytorch_path:
        with native.disabled():
            measure(args)
    else:
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """Measure with the parsed options, print the report and optionally write JSON."""
    base = QUICK if args.quick else Config()
    cfg = replace(base, threads=args.threads, batch=args.batch or base.batch)
    size = args.matmul_size or (256 if args.quick else 2048)
    min_block = args.min_block or (0.005 if args.quick else 0.05)
    torch.manual_seed(cfg.seed)

    print("calibrating ...", file=sys.stderr, flush=True)
    square = matmul_timer((size, size), (size, size), min_block)
    spn = RatSPN(cfg.image_shape, depth=cfg.depth, num_repetitions=cfg.num_repetitions, num_sums=cfg.num_sums,
                 num_leaves=cfg.num_leaves, leaf=Binomial(total_count=cfg.total_count), seed=cfg.seed)
    x = random_data(cfg)
    with torch.no_grad():
        inputs = spn.upward(x).layer_inputs
    layer_timers = [LayerTimers(layer, layer_input, min_block)
                    for layer, layer_input in zip(spn.inner_layers, inputs, strict=True)]
    built = build(cfg)
    log_prob = Timer(built.ops[LOG_PROB], min_block)
    timers = [square, *(timer for layer in layer_timers for timer in layer.timers()), log_prob]
    for round_index in range(args.repeats):
        for timer in timers:
            timer.block()
        print(f"  round {round_index + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    square_s = square.median
    layers = [timer.result() for timer in layer_timers]
    model = {"log_prob_s": log_prob.median, "leaf_flops": leaf_flops(spn, x)}

    machine = describe_machine(args.threads, built.versions)
    print(format_report(cfg, (size, square_s), layers, model, machine, args.repeats))
    if args.json is not None:
        payload = {
            "config": asdict(cfg),
            "machine": machine,
            "repeats": args.repeats,
            "min_block_s": min_block,
            "square_matmul": {"size": size, "seconds": square_s, "gflops": 2 * size**3 / square_s / 1e9},
            "layers": [{**asdict(layer), "forward_gflops_matmul": layer.forward_gflops(layer.matmul_flops),
                        "forward_gflops_all": layer.forward_gflops(layer.all_flops),
                        "backward_gflops_3x_all": layer.backward_gflops()} for layer in layers],
            "model": model,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
