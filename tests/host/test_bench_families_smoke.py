"""The GPU memory bench's CPU smoke mode: it runs on this host, and its block-swap case trains what the resident one
does (the figure it reports on a GPU is then the memory of the same training)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_flux_fp8_bench_swaps_blocks_and_trains_the_same_as_resident(host):
    command = [str(host.python), str(ROOT / "bench" / "bench_families_gpu.py"), "--tiny", "--cpu"]
    command += ["--cases", "flux_fp8,flux_fp8_swap", "--comfyui", str(host.comfyui)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    results = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["case"]] = result
    resident, swapped = results["flux_fp8"], results["flux_fp8_swap"]
    assert "error" not in resident and "error" not in swapped, results
    assert (resident["blocks_to_swap"], swapped["blocks_to_swap"]) == (0, 1)
    assert swapped["linear_weight_dtype"] == "float8_e4m3fn"
    assert swapped["last_loss"] == resident["last_loss"] != swapped["first_loss"]
    assert "flux_fp8_swap" in out.stdout.split("peak RSS GiB")[-1], "the table lists the swapped case"
