"""The package's shape, read from the source with ast (nothing is imported): no import cycles; arrows run
nodes -> capability packages -> shared pieces, never back; only `lora_train.host` touches ComfyUI; the product
never imports the development tooling; other code uses a capability through its package's exports."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CAPABILITIES = ("training", "dataset", "fetch", "release", "upload", "llm")
SHARED = ("lora_train", "lora_train.settings", "lora_train.fsutil", "lora_train.safetensors_file", "lora_train.lazy")
COMFYUI_MODULES = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "server", "node_helpers", "latent_preview"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    paths = sorted((REPO_ROOT / "lora_train").rglob("*.py")) + sorted((REPO_ROOT / "nodes").rglob("*.py"))
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in paths}


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A package's `EXPORTS = {name: submodule}` table (see lora_train.lazy)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under `if TYPE_CHECKING:` (annotations only: no import at run time)."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }


def _imports(name: str, path: Path, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every run-time import in the file, at any depth, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names]))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's lazy exports count as imports of their submodules)."""
    sources = _sources()
    exports = {name: _lazy_exports(tree) for name, (_, tree) in sources.items()}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, (path, tree) in sources.items():
        edges[name] |= {f"{name}.{sub}" for sub in exports[name].values()}
        for module, names in _imports(name, path, tree):
            # `from pkg import submodule` and `from pkg import Exported` depend on that submodule, not on every
            # export of the package (a lazy `__init__` imports none of them at run time).
            targets = [f"{module}.{n}" if f"{module}.{n}" in sources else f"{module}.{exports[module][n]}"
                       for n in names if f"{module}.{n}" in sources or n in exports.get(module, {})]  # fmt: skip
            edges[name] |= set(targets)
            if module in sources and (not targets or len(targets) < len(names)):
                edges[name].add(module)
            if module.split(".")[0] in COMFYUI_MODULES or (module == "nodes" and not name.startswith("nodes")):
                edges[name].add(f"<{module}>")
        edges[name].discard(name)
    return dict(edges)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _capability(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "nodes":
        return "nodes"
    return ".".join(parts[:2]) if len(parts) > 1 and parts[0] == "lora_train" else module


def test_no_import_cycles_between_modules(graph):
    assert _cycles(graph) == []


def test_no_cycles_between_packages(graph):
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        packages[_capability(module)] |= {_capability(t) for t in targets if not t.startswith("<")}
    for package, targets in packages.items():
        targets.discard(package)
    assert _cycles(packages) == []


def test_only_the_host_adapter_and_dev_tooling_touch_comfyui(graph):
    offenders = {
        module: sorted(t for t in targets if t.startswith("<"))
        for module, targets in graph.items()
        if module.startswith("lora_train") and not module.startswith(("lora_train.host", "lora_train.dev"))
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_core_never_imports_the_nodes(graph):
    assert [m for m, targets in graph.items() if m.startswith("lora_train") and "<nodes>" in targets] == []


def test_the_product_never_imports_dev_tooling(graph):
    product = {m: t for m, t in graph.items() if not m.startswith("lora_train.dev") and m != "lora_train.cli.demo"}
    assert {m: sorted(t) for m, t in product.items() if any(x.startswith("lora_train.dev") for x in t)} == {}


def test_shared_pieces_import_only_shared_pieces(graph):
    assert {m: sorted(t) for m in SHARED if (t := graph.get(m, set()) - set(SHARED))} == {}


def test_other_code_uses_a_capability_through_its_exports():
    """`from lora_train.training import train_lora`, not `from lora_train.training.loop import ...` (outside it)."""
    reached_inside = []
    for name, (path, tree) in _sources().items():
        if name.startswith("lora_train.dev"):
            continue
        own = _capability(name)
        for module, _ in _imports(name, path, tree):
            parts = module.split(".")
            if parts[0] == "lora_train" and len(parts) > 2 and parts[1] in CAPABILITIES:
                if _capability(module) != own:
                    reached_inside.append(f"{name} imports {module}")
    assert reached_inside == []


def test_every_package_says_what_it_does():
    for init in sorted((REPO_ROOT / "lora_train").rglob("__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 40, f"{init.relative_to(REPO_ROOT)} needs a docstring"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
