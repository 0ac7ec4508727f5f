"""Write example_workflows/: API-format files from tests/browser/examples.py, UI-format files converted from them
by the real ComfyUI frontend (headless Chromium against a test host), each with a Note saying what to set.

    python -m tests.browser.build_examples            # every example (UI files written by the oldest tested host)
    python -m tests.browser.build_examples NAME ...   # only these

Run it with the host venv's python after changing a node's widgets; the host test fails until the files match.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from tests.browser import examples

log = logging.getLogger(__name__)

# Frontend side of the conversion: load the API graph as the "Load (API format)" menu does, pin seeds, add a Note.
API_TO_UI_JS = """
({ api, note, name }) => {
    const app = window.app;
    app.loadApiJson(api, name);
    for (const node of app.graph.nodes) {
        for (const widget of node.widgets ?? []) {
            if (widget.name === "control_after_generate") widget.value = "fixed";
            // loadApiJson sets values through the widgets' callbacks, which round floats to the widget step;
            // keep the API file's exact values.
            const value = api[String(node.id)]?.inputs?.[widget.name];
            if (value !== undefined && !Array.isArray(value)) widget.value = value;
        }
    }
    const nodes = app.graph.nodes;
    const left = Math.min(...nodes.map((n) => n.pos[0]));
    const top = Math.min(...nodes.map((n) => n.pos[1]));
    const noteNode = window.LiteGraph.createNode("Note");
    noteNode.widgets[0].value = note;
    noteNode.title = "Read me";
    noteNode.size = [420, 260];
    noteNode.pos = [left, top - 300];
    app.graph.add(noteNode);
    const graph = app.graph.serialize();
    delete graph.extra?.ds;
    return JSON.stringify(graph); // drops undefined fields, as the frontend's own Save does

}
"""


def write_json(path: Path, document: dict) -> None:
    """Write `document` as indented JSON (atomically)."""
    from lora_train.fsutil import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def build_api(names: list[str]) -> list[str]:
    """Write the API-format files; returns the names written (an example whose nodes are missing is skipped)."""
    written = []
    for name in names:
        try:
            workflow = examples.BUILDERS[name]()
        except ImportError as exc:
            log.warning("skipping %s: %s (its node is not in this checkout)", name, exc)
            continue
        write_json(examples.API_DIR / f"{name}.json", workflow)
        written.append(name)
    return written


def build_ui(names: list[str]) -> None:
    """Convert the API-format files to UI format in the real frontend of a fresh test host."""
    from lora_train.dev import host_builder
    from lora_train.dev.server import ComfyServer
    from tests.browser.browser import ensure_chromium, frontend, launch

    reason = ensure_chromium()
    if reason:
        raise SystemExit(f"cannot convert to UI format: {reason}")
    # The oldest tested frontend writes them: every tested frontend loads its UI format (checked on both hosts by
    # tests/browser/test_train_view.py), while 0.33's frontend 1.49.6 does not convert an API graph this way.
    host = host_builder.setup_host(next(iter(host_builder.HOSTS)))
    with tempfile.TemporaryDirectory(prefix="lora_examples_") as base:
        server = ComfyServer(host.comfyui, host.python, Path(base))
        with server, launch() as browser, frontend(browser, server.url) as page:
            for name in names:
                graph_json = page.evaluate(API_TO_UI_JS, {"api": examples.load_api(name), "note": examples.NOTES[name],
                                                     "name": name})  # fmt: skip
                graph = json.loads(graph_json)
                if len(graph["nodes"]) <= len(examples.load_api(name)):  # the API graph's nodes plus the Note
                    raise SystemExit(f"the frontend lost nodes converting {name}: {len(graph['nodes'])} nodes written")
                write_json(examples.EXAMPLES_DIR / f"{name}.json", graph)
                log.info("wrote %s (%d nodes)", name, len(graph["nodes"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"examples to build (default: all of {', '.join(examples.BUILDERS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(examples.BUILDERS))
    if unknown:
        parser.error(f"unknown example(s) {', '.join(unknown)}; known: {', '.join(examples.BUILDERS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = build_api(args.names or list(examples.BUILDERS))
    build_ui(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
