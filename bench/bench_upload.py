"""Upload cost vs a peer on the same loopback server and file: WebDAV vs `rclone copyto` (rclone serve webdav),
S3 vs boto3's `upload_file` (moto's server behind the test proxy).

    python bench/bench_upload.py [--size-mb 64] [--rounds 3]

Ours is timed as a destination's `upload` (send + read back + sha256 check; WebDAV also MOVEs the temporary name
into place); the peers only send. So the ratio shows what verification costs on top of the transfer. Peers and ours
alternate, `--rounds` times each; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lora_train.dev.http_server import write_big_safetensors  # noqa: E402
from lora_train.dev.storage_servers import ensure_rclone, moto_s3, rclone_webdav  # noqa: E402
from lora_train.upload import parse_destination  # noqa: E402


def median_seconds(run, rounds: int) -> float:
    times = []
    for index in range(rounds):
        start = time.perf_counter()
        run(index)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_webdav(path: Path, sha: str, rounds: int, work: Path) -> tuple[float, float]:
    with rclone_webdav(work / "dav") as dav:
        os.environ["LORA_TRAIN_WEBDAV_USER"], os.environ["LORA_TRAIN_WEBDAV_PASSWORD"] = dav.user, dav.password
        dest = parse_destination(dav.url.replace("http://", "webdav://") + "ours")
        dest.check()
        ours = median_seconds(lambda i: dest.upload(path, f"ours{i}.safetensors", sha), rounds)
        remote = f":webdav,url='{dav.url}',user={dav.user},pass={obscure(dav.password)}:peer/"
        peer = median_seconds(lambda i: subprocess.run([ensure_rclone(), "copyto", str(path),
                                                        f"{remote}peer{i}.safetensors", "--config", "/dev/null"],
                                                       check=True, capture_output=True), rounds)  # fmt: skip
    return ours, peer


def obscure(password: str) -> str:
    return subprocess.run([ensure_rclone(), "obscure", password], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def bench_s3(path: Path, sha: str, rounds: int) -> tuple[float, float]:
    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with moto_s3() as s3:
        dest = parse_destination(f"s3://releases/ours?endpoint={s3.endpoint}&region=us-east-1&part_mb=16")
        ours = median_seconds(lambda i: dest.upload(path, f"ours{i}.safetensors", sha), rounds)
        client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20)
        peer = median_seconds(lambda i: client.upload_file(str(path), "releases", f"peer/{i}.safetensors",
                                                           Config=config), rounds)  # fmt: skip
    return ours, peer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_upload_") as tmp:
        work = Path(tmp)
        path = work / "bench.safetensors"
        sha = write_big_safetensors(path, args.size_mb << 20, seed=1)
        mb = path.stat().st_size / 1e6
        for label, (ours, peer) in (("webdav vs rclone copyto", bench_webdav(path, sha, args.rounds, work)),
                                    ("s3 vs boto3 upload_file", bench_s3(path, sha, args.rounds))):  # fmt: skip
            print(f"{label:<26} ours {ours:6.2f} s ({mb / ours:6.1f} MB/s, verified)  peer {peer:6.2f} s "
                  f"({mb / peer:6.1f} MB/s)  ratio {ours / peer:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
