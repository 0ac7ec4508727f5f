"""Fetch throughput vs curl (and aria2c -x4 when installed) on one loopback server and file, plus resume cost.

    python bench/bench_fetch.py [--size-mb 200] [--rounds 3]

The file server runs in its own process (so it does not share our GIL). Peers run alternately, `--rounds` times
each; medians are reported. Ours is timed in-process (fetch_lora: download + sha256 + safetensors check + fsync +
placement), the peers as processes that only write the bytes. Then a fetch is killed (SIGKILL) at 50% and
restarted: the bytes fetched again that were already on disk are reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lora_train.dev.http_server import FaultServer, Route, write_big_safetensors  # noqa: E402
from lora_train.fetch import FetchConfig, fetch_lora  # noqa: E402

NAME = "bench.safetensors"
SLOW = "/slow/" + NAME


def serve(path: Path) -> None:
    """Child process: serve `path` at /bench.safetensors (sendfile) and throttled at /slow/..., print the port."""
    with FaultServer() as server:
        server.add("/" + NAME, Route(file=path, etag='"bench"'))
        server.add(SLOW, Route(file=path, etag='"bench"', trickle=(1 << 20, 0.01)))  # ~100 MB/s
        print(server.server_address[1], flush=True)
        sys.stdin.read()  # until the parent closes our stdin


def timed(run, work: Path) -> float:
    """Seconds for one run; its output is deleted right after, so every run starts with the same free memory."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    run(work)
    seconds = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def run_ours(url: str, sha: str, work: Path) -> None:
    cfg = FetchConfig(urls=url, sha256=sha, allow_private_addresses=True, cache_dir=str(work / "cache"))
    result = fetch_lora(cfg, work / "loras")
    assert result.status == "downloaded", result.status


def run_peer(cmd: list[str], work: Path) -> None:
    subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_and_resume(base: str, sha: str, size: int, work: Path) -> tuple[int, int, int]:
    """Kill a CLI fetch at >= 50% of the file; returns (bytes on disk at the kill, resume offset, bytes refetched)."""
    shutil.rmtree(work, ignore_errors=True)
    cache = work / "cache"
    cli = [sys.executable, "-m", "lora_train", "fetch", base + SLOW, "--sha256", sha, "--dest", str(work / "loras"),
           "--allow-private", "--set", f"cache_dir={cache}"]  # fmt: skip
    proc = subprocess.Popen(cli, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = cache / "partial" / f"{sha}.part"
    on_disk = 0
    while proc.poll() is None:
        on_disk = partial.stat().st_size if partial.exists() else 0
        if on_disk >= size // 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    on_disk = partial.stat().st_size
    reports = []
    cfg = FetchConfig(urls=base + "/" + NAME, sha256=sha, allow_private_addresses=True, cache_dir=str(cache))
    result = fetch_lora(cfg, work / "loras", progress=reports.append)
    resumed_from = size - result.bytes_downloaded
    return on_disk, resumed_from, max(0, on_disk - resumed_from)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_fetch_") as tmp:
        root = Path(tmp)
        source = root / NAME
        sha = write_big_safetensors(source, args.size_mb * 1024 * 1024)
        size = source.stat().st_size
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(source)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            base = f"http://127.0.0.1:{server.stdout.readline().strip()}"
            url = f"{base}/{NAME}"
            peers = {"ours": lambda work: run_ours(url, sha, work)}
            if shutil.which("curl"):
                peers["curl"] = lambda work: run_peer(["curl", "-sf", "-o", NAME, url], work)
            if shutil.which("aria2c"):
                aria = ["aria2c", "-x4", "-s4", "-q", "--file-allocation=none", "-o", NAME, url]
                peers["aria2c -x4"] = lambda work: run_peer(aria, work)
            times: dict[str, list[float]] = {name: [] for name in peers}
            timed(peers["ours"], root / "warmup")  # first touches of fresh memory are slow on VMs: not anyone's
            for _ in range(args.rounds):
                for name, run in peers.items():
                    times[name].append(timed(run, root / "work"))
            print(f"file: {size / 1e6:.0f} MB on a loopback server (separate process), {args.rounds} rounds")
            medians = {name: statistics.median(values) for name, values in times.items()}
            best = {name: min(values) for name, values in times.items()}
            for name, seconds in medians.items():
                spread = ", ".join(f"{t:.3f}" for t in times[name])
                print(f"  {name:<11} median {size / seconds / 1e6:5.0f} MB/s, best {size / best[name] / 1e6:5.0f} MB/s"
                      f"   ({spread} s)")  # fmt: skip
            for peer in (p for p in medians if p != "ours"):
                print(f"  throughput ratio ours / {peer}: median {medians[peer] / medians['ours']:.2f}x, "
                      f"best {best[peer] / best['ours']:.2f}x")  # fmt: skip
            on_disk, resumed_from, refetched = kill_and_resume(base, sha, size, root / "resume")
            print(f"kill at 50%: {on_disk} bytes on disk when killed, resumed from byte {resumed_from}; "
                  f"bytes fetched again: {refetched} (chunk size {1 << 20})")  # fmt: skip
        finally:
            server.stdin.close()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
