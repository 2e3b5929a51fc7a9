"""Smoke test of the FLOP-rate benchmark (the peer benchmarks need the peers installed and are not run here)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_flops_quick_runs_and_reports_every_layer(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_flops.py"), "--quick", "--repeats", "1", "--min-block", "0.001",
         "--threads", "1", "--json", str(tmp_path / "flops.json")],
        capture_output=True, text=True, timeout=300, check=True)
    assert "(= 'gemm')" in result.stdout and "(= 'bmm')" in result.stdout
    payload = json.loads((tmp_path / "flops.json").read_text())
    assert len(payload["layers"]) == payload["config"]["depth"]
    for layer in payload["layers"]:
        assert layer["forward_s"] > 0 and layer["backward_s"] > 0
        assert layer["forward_gflops_all"] > 0
