"""The one test command: builds the pinned ComfyUI test hosts if needed, then runs pytest inside their venvs.

    python3 tests/run.py                      # everything: the whole suite on the newest host, then the host
                                              # layer (tests/host) again on the oldest tested host
    python3 tests/run.py --host 0.3.75 [pytest args...]   # one host (default: the newest), these tests

`$LORA_TRAIN_HOST` also picks the host. pytest's exit code 5 ("no tests collected") is turned into a failure.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lora_train.dev import host_builder  # noqa: E402
from lora_train.dev.lifetime import die_with_parent_hook  # noqa: E402


def run_on(version: str, args: list[str]) -> int:
    """pytest `args` inside host `version`'s venv; exit code 5 (no tests) counts as a failure."""
    host = host_builder.setup_host_for_command("the tests", version)
    env = {**os.environ, host_builder.HOST_ENV: version}
    print(f"== pytest on ComfyUI {version}: {' '.join(args)}", flush=True)
    # pytest (and, through it, every ComfyUI server it starts) ends with this command, however it is stopped.
    pytest = subprocess.Popen(
        [str(host.python), "-m", "pytest", *args], cwd=REPO_ROOT, env=env, preexec_fn=die_with_parent_hook()
    )
    code = pytest.wait()
    if code == 5:
        print("pytest collected no tests: that is a failure here", file=sys.stderr)
        return 1
    return code


def main(argv: list[str]) -> int:
    version = None
    if argv[:1] == ["--host"]:
        if len(argv) < 2:
            print(f"--host needs a version: {', '.join(host_builder.HOSTS)}", file=sys.stderr)
            return 2
        version, argv = argv[1], argv[2:]
    try:
        newest = version or host_builder.host_version()
    except host_builder.HostSetupError as exc:
        print(exc, file=sys.stderr)
        return 2
    if version is not None or argv:
        return run_on(newest, argv or ["tests"])
    oldest = next(iter(host_builder.HOSTS))
    code = run_on(newest, ["tests"])
    if oldest != newest:
        code = run_on(oldest, ["tests/host"]) or code
    else:
        print(f"only ComfyUI {newest} is available here: the newest host's tarball was not found", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
