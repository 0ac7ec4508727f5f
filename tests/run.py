"""The one test command: builds the pinned ComfyUI test host if needed, then runs pytest inside its venv.

    python3 tests/run.py [pytest args...]

pytest's exit code 5 ("no tests collected") is turned into a failure.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lora_train.dev import host_builder  # noqa: E402


def main() -> int:
    host = host_builder.setup_host_for_command("the tests")
    args = sys.argv[1:] or ["tests"]
    code = subprocess.call([str(host.python), "-m", "pytest", *args], cwd=REPO_ROOT, env={**os.environ})
    if code == 5:
        print("pytest collected no tests: that is a failure here", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
