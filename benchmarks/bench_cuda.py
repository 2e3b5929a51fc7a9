"""pyro_spn on a GPU: speed, peak memory and edge throughput of the paper's RAT-SPN, plus correctness checks.

Usage::

    python benchmarks/bench_cuda.py [--device cuda] [--batches 128,1024,4096] [--repeats 5]
        [--check] [--quick] [--json results.json]

Our library only (the peers run on the CPU in ``bench_circuit.py``). The circuit is ``Config`` of
``_common.py`` (784 variables, Binomial(255) leaves, depth 4, 10 repetitions, 20 sums, 20 leaves), float32.
For every batch size ``N`` it times, with ``torch.cuda.synchronize()`` around every timed block:

* ``log_prob``: log-likelihood of ``N`` examples under ``torch.no_grad()``;
* ``fwd_bwd``: ``-log_likelihood(x).mean()`` and its ``backward`` (no optimizer);
* ``train_step``: ``zero_grad``, forward, backward and ``Adam.step``;
* ``sample``: ``N`` exact samples;
* ``rsample_st``: ``N`` straight-through samples, then ``samples.mean().backward()``.

Times are medians of ``--repeats`` blocks; the operations take turns block by block (interleaved), after
``--warmup`` calls each. Peak memory: after warm-up, ``torch.cuda.reset_peak_memory_stats()``, one call,
then ``max_memory_allocated()`` minus the allocation before the call (the memory the call itself needs;
persistent state such as Adam's moments is in the baseline).

Edges: the circuit's edges, counted from its structure (:func:`count_edges`):

* sum edges = one per weight: every einsum layer's ``L*K_out*R*K_in^2`` weights (its parameter count)
  plus the ``R`` root weights;
* product edges = two per product unit of an einsum layer (``R*L*K_in^2`` units with a left and a right
  child), plus one per variable for the leaf products (every leaf component of a leaf region is a product of
  univariate distributions over that region's variables: ``R*I*C*F`` edges).

Edge throughput = edges * N / time, for ``fwd_bwd`` (and ``train_step``): the figure PyJuice reports for
its circuits (it counts sum and product edges the same way and the input distributions not at all).

``--check`` first runs correctness checks on the device against the CPU (float64 and float32 log-likelihoods
and gradients, and that sample / rsample / condition / mpe run and give valid values) and prints
``CHECK ok``/``CHECK FAIL`` lines. ``--device cpu`` with ``--quick`` smoke-tests the script anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from _common import Config, random_data
from bench_circuit import QUICK

import pyro_spn
from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Binomial

OPS = ("log_prob", "fwd_bwd", "train_step", "sample", "rsample_st")
LABELS = {
    "log_prob": "log-likelihood, no grad",
    "fwd_bwd": "forward + backward",
    "train_step": "fwd + bwd + Adam step",
    "sample": "exact sample, no grad",
    "rsample_st": "straight-through sample + bwd",
}


def build_spn(cfg: Config, device: torch.device | str, dtype: torch.dtype = torch.float32) -> RatSPN:
    """The benchmark's ``RatSPN`` on ``device``."""
    spn = RatSPN(cfg.image_shape, depth=cfg.depth, num_repetitions=cfg.num_repetitions, num_sums=cfg.num_sums,
                 num_leaves=cfg.num_leaves, leaf=Binomial(total_count=cfg.total_count), seed=cfg.seed)
    return spn.to(device=device, dtype=dtype)


def count_edges(spn: RatSPN) -> dict[str, int]:
    """Sum and product edges of the circuit (see the module docstring)."""
    layer_weights = sum(layer.logits.numel() for layer in spn.inner_layers)
    root_weights = spn.root.logits.numel()
    pair_products = sum(2 * layer.num_repetitions * layer.num_regions * layer.num_inputs**2
                        for layer in spn.inner_layers)
    leaf_products = spn.num_repetitions * spn.num_leaves * spn.num_channels * spn.num_features
    sums = layer_weights + root_weights
    products = pair_products + leaf_products
    return {"sum_edges": sums, "product_edges": products, "einsum_layer_weights": layer_weights,
            "root_weights": root_weights, "pair_product_edges": pair_products, "leaf_product_edges": leaf_products,
            "edges": sums + products}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_ops(spn: RatSPN, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The timed operations on batch ``x``."""
    n = x.shape[0]
    dist = SPNDistribution(spn, temperature=1.0)
    params = list(spn.parameters())
    optimizer = torch.optim.Adam(params)

    def log_prob() -> None:
        with torch.no_grad():
            dist.log_prob(x)

    def fwd_bwd() -> None:
        for p in params:
            p.grad = None
        (-dist.log_prob(x).mean()).backward()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        (-dist.log_prob(x).mean()).backward()
        optimizer.step()

    def sample() -> None:
        dist.sample((n,))

    def rsample_st() -> None:
        for p in params:
            p.grad = None
        dist.rsample((n,)).float().mean().backward()

    return {"log_prob": log_prob, "fwd_bwd": fwd_bwd, "train_step": train_step, "sample": sample,
            "rsample_st": rsample_st}


def peak_memory_mib(op: Callable[[], None], device: torch.device) -> float | None:
    """Extra device memory one call of ``op`` allocates at its peak, in MiB (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    op()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def time_ops(ops: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int,
             min_block: float) -> dict[str, float]:
    """Median seconds per call of every op: warm-up, calibration, then interleaved blocks."""
    numbers = {}
    for name, op in ops.items():
        for _ in range(warmup):
            op()
        synchronize(device)
        start = time.perf_counter()
        op()
        synchronize(device)
        numbers[name] = max(1, round(min_block / max(time.perf_counter() - start, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(numbers[name]):
                op()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / numbers[name])
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_gflops(device: torch.device, size: int, repeats: int) -> float:
    """fp32 ``size^3`` matmul rate (with the current matmul precision setting)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    ops = {"mm": lambda: torch.matmul(a, b)}
    seconds = time_ops(ops, device, repeats, warmup=2, min_block=0.05)["mm"]
    return 2 * size**3 / seconds / 1e9


# -- correctness checks -------------------------------------------------------------------------------------
def run_checks(cfg: Config, device: torch.device) -> list[tuple[str, bool, str]]:
    """Correctness of the device path against the CPU; every check reports on its own."""
    results: list[tuple[str, bool, str]] = []

    def check(name: str, fn: Callable[[], str]) -> None:
        try:
            detail = fn()
            results.append((name, True, detail))
            print(f"CHECK ok   {name}: {detail}", flush=True)
        except Exception as error:  # every check is reported, the run goes on
            detail = f"{type(error).__name__}: {error}"
            results.append((name, False, detail))
            print(f"CHECK FAIL {name}: {detail}", flush=True)
            traceback.print_exc()

    check_cfg = replace(cfg, batch=64)
    x_cpu = random_data(check_cfg)
    generator = torch.Generator().manual_seed(1)
    missing = torch.rand(x_cpu.shape, generator=generator) < 0.3
    x_missing_cpu = torch.where(missing, torch.full_like(x_cpu, float("nan")), x_cpu)
    cpu64 = build_spn(check_cfg, "cpu", torch.float64)
    dev64 = build_spn(check_cfg, device, torch.float64)
    dev32 = build_spn(check_cfg, device, torch.float32)

    def log_prob_matches() -> str:
        details = []
        for label, x in (("complete", x_cpu), ("30% missing", x_missing_cpu)):
            with torch.no_grad():
                reference = cpu64(x.double())
                on64 = dev64(x.double().to(device)).cpu()
                on32 = dev32(x.to(device)).cpu().double()
            err64 = ((on64 - reference).abs() / reference.abs()).max().item()
            err32 = ((on32 - reference).abs() / reference.abs()).max().item()
            assert err64 < 1e-10, f"{label}: float64 relative error {err64:.3g}"
            assert err32 < 1e-4, f"{label}: float32 relative error {err32:.3g}"
            details.append(f"{label}: max rel. err. float64 {err64:.2g}, float32 {err32:.2g}")
        return "; ".join(details) + f" (|ll| ~ {reference.abs().mean().item():.4g})"

    def gradients_match() -> str:
        worst = 0.0
        for model, x in ((cpu64, x_missing_cpu.double()), (dev64, x_missing_cpu.double().to(device))):
            model.zero_grad(set_to_none=True)
            (-model(x).mean()).backward()
        for (name, p_cpu), p_dev in zip(cpu64.named_parameters(), dev64.parameters(), strict=True):
            scale = p_cpu.grad.abs().max().item() + 1e-300
            err = (p_dev.grad.cpu() - p_cpu.grad).abs().max().item() / scale
            assert err < 1e-7, f"{name}: relative gradient error {err:.3g}"
            worst = max(worst, err)
        return f"float64 gradients of all parameters, max error / max |grad| = {worst:.2g}"

    def samples_valid() -> str:
        dist = SPNDistribution(dev32)
        hard = dist.sample((256,))
        assert hard.device.type == device.type and hard.shape == (256, *cfg.image_shape)
        assert bool(((hard >= 0) & (hard <= cfg.total_count) & (hard == hard.round())).all()), "values off support"
        mean = dist.mean
        many = dist.sample((8192,)).mean(0)
        gap = (many - mean).abs().mean().item()
        assert gap < 2.0, f"mean of 8192 samples is {gap:.3g} from the exact mean on average"
        return f"sample in support; |mean of 8192 samples - exact mean| = {gap:.3g} (pixel scale 0-255)"

    def rsample_runs() -> str:
        details = []
        for label, dist in (("straight-through", SPNDistribution(dev32)),
                            ("soft per unit", SPNDistribution(dev32, hard=False)),
                            ("soft per region", SPNDistribution(dev32, hard=False, interpolation="region"))):
            dev32.zero_grad(set_to_none=True)
            draws = dist.rsample((16,))
            draws.float().mean().backward()
            grads = [p.grad for p in dev32.parameters() if p.grad is not None]
            assert draws.device.type == device.type and bool(torch.isfinite(draws).all())
            assert grads and all(bool(torch.isfinite(g).all()) for g in grads), f"{label}: gradients"
            details.append(f"{label} ({len(grads)} parameter grads, finite)")
        return ", ".join(details)

    def condition_and_mpe() -> str:
        dist = SPNDistribution(dev32)
        evidence = x_missing_cpu[:8].to(device)
        observed = ~torch.isnan(evidence)
        conditional = dist.condition(evidence)
        filled = conditional.sample((4,))
        assert filled.shape == (4, *evidence.shape)
        assert bool((filled[:, observed] == evidence[observed]).all()), "observed entries changed"
        assert bool(torch.isfinite(filled).all())
        cond_lp = conditional.log_prob(filled)
        assert bool(torch.isfinite(cond_lp).all())
        completion, value = dist.mpe_with_log_prob(evidence)
        assert bool((completion[observed] == evidence[observed]).all()) and bool(torch.isfinite(value).all())
        completion_cpu, value_cpu = SPNDistribution(cpu64).mpe_with_log_prob(x_missing_cpu[:8].double())
        value_err = ((value.cpu().double() - value_cpu).abs() / value_cpu.abs()).max().item()
        same = (completion.cpu().double() == completion_cpu).float().mean().item()
        assert value_err < 1e-4, f"MPE value differs from the CPU's by {value_err:.3g} (relative)"
        return (f"condition.sample/log_prob ok; mpe value vs CPU float64 rel. err. {value_err:.2g}, "
                f"{100 * same:.2f}% of completed entries identical")

    check("log_prob CUDA vs CPU float64", log_prob_matches)
    check("gradients CUDA vs CPU float64", gradients_match)
    check("sample on device", samples_valid)
    check("rsample + backward on device", rsample_runs)
    check("condition + mpe on device", condition_and_mpe)
    return results


# -- report -------------------------------------------------------------------------------------------------
def format_table(batches: list[int], rows: dict[int, dict], edges: dict[str, int]) -> str:
    lines = ["| operation | " + " | ".join(f"N={n} ms" for n in batches) + " |",
             "|---|" + "---:|" * len(batches)]
    for op in OPS:
        lines.append(f"| {LABELS[op]} | " + " | ".join(f"{1e3 * rows[n]['seconds'][op]:.3g}" for n in batches) + " |")
    for op in OPS:
        lines.append(f"| peak MiB, {LABELS[op]} | "
                     + " | ".join("-" if rows[n]["peak_mib"][op] is None else f"{rows[n]['peak_mib'][op]:.0f}"
                                  for n in batches) + " |")
    for op in ("fwd_bwd", "train_step"):
        lines.append(f"| edge·samples/s, {LABELS[op]} | "
                     + " | ".join(f"{edges['edges'] * n / rows[n]['seconds'][op]:.2e}" for n in batches) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 128,1024,4096)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-block", type=float, default=0.05, help="seconds per timed block")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--tf32", action="store_true",
                        help="also time forward + backward with TF32 matmuls (float32_matmul_precision 'high')")
    parser.add_argument("--check", action="store_true", help="run the correctness checks first")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top kernels of forward + backward at the largest batch")
    parser.add_argument("--quick", action="store_true", help="tiny circuit and batches, to smoke-test the script")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available")
    cfg = QUICK if args.quick else Config()
    batches = [int(b) for b in (args.batches or ("16,64" if args.quick else "128,1024,4096")).split(",")]
    matmul_size = 256 if args.quick else args.matmul_size

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, pyro_spn {pyro_spn.__version__}, "
          f"float32 matmul precision {torch.get_float32_matmul_precision()!r}", flush=True)
    payload: dict = {"config": asdict(cfg), "device": name, "torch": torch.__version__}
    if args.check:
        payload["checks"] = [{"name": n, "ok": ok, "detail": d} for n, ok, d in run_checks(cfg, device)]

    gemm = matmul_gflops(device, matmul_size, args.repeats)
    print(f"fp32 matmul {matmul_size}^3: {gemm:.0f} GFLOP/s", flush=True)
    payload["matmul_gflops"] = gemm
    spn = build_spn(cfg, device)
    edges = count_edges(spn)
    payload["edges"] = edges
    print("edges: " + ", ".join(f"{k} {v:,}" for k, v in edges.items()), flush=True)
    rows: dict[int, dict] = {}
    for n in batches:
        x = random_data(replace(cfg, batch=n)).to(device)
        ops = make_ops(spn, x)
        try:
            seconds = time_ops(ops, device, args.repeats, args.warmup, args.min_block)
            peak = {op: peak_memory_mib(fn, device) for op, fn in ops.items()}
        except torch.cuda.OutOfMemoryError as error:
            print(f"N={n}: out of memory ({error})", flush=True)
            break
        rows[n] = {"seconds": seconds, "peak_mib": peak,
                   "edge_samples_per_s": {op: edges["edges"] * n / seconds[op] for op in ("fwd_bwd", "train_step")}}
        print(f"N={n}: " + ", ".join(f"{op} {1e3 * s:.3f} ms" for op, s in seconds.items())
              + f"; fwd+bwd {edges['edges'] * n / seconds['fwd_bwd']:.3e} edge·samples/s", flush=True)
        del ops, x
        if device.type == "cuda":
            torch.cuda.empty_cache()
    done = [n for n in batches if n in rows]
    payload["rows"] = {str(n): rows[n] for n in done}

    if args.tf32 and device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        payload["tf32_matmul_gflops"] = matmul_gflops(device, matmul_size, args.repeats)
        payload["tf32_fwd_bwd_s"] = {}
        for n in done:
            x = random_data(replace(cfg, batch=n)).to(device)
            fwd_bwd = {"fwd_bwd": make_ops(spn, x)["fwd_bwd"]}
            seconds = time_ops(fwd_bwd, device, args.repeats, args.warmup, args.min_block)["fwd_bwd"]
            payload["tf32_fwd_bwd_s"][str(n)] = seconds
            print(f"TF32 N={n}: fwd_bwd {1e3 * seconds:.3f} ms, {edges['edges'] * n / seconds:.3e} edge·samples/s",
                  flush=True)
        torch.set_float32_matmul_precision("highest")

    if args.profile and done:
        x = random_data(replace(cfg, batch=done[-1])).to(device)
        fwd_bwd = make_ops(spn, x)["fwd_bwd"]
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(3):
                fwd_bwd()
            synchronize(device)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(f"profile of 3 x forward + backward at N={done[-1]}:")
        print(profiler.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))

    print()
    print(format_table(done, rows, edges))
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=2))
    if args.check and not all(c["ok"] for c in payload["checks"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
