"""Package exports resolved on first use: importing a capability package stays cheap (no torch, no PIL) until a
name from it is used. ComfyUI imports the nodes at start-up, and `python -m lora_train fetch` should not pay for
torch; so each package's `__init__` lists its public names in `EXPORTS` (name -> submodule) instead of importing."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` that import `package.<exports[name]>` when `name` is first used."""

    def __getattr__(name: str) -> object:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{submodule}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
