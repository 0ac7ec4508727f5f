"""Shared pieces of the language-model tests: a memorisable data set and tiny model folders built once per session."""

from __future__ import annotations

import json
from pathlib import Path

# Short, distinct answers the tiny models can memorise in a few dozen steps.
MEMORISABLE = [
    {"instruction": "what colour is the sky?", "output": "blue"},
    {"instruction": "capital of france", "input": "one word", "output": "paris"},
    {"messages": [{"role": "user", "content": "talk like a pirate"}, {"role": "assistant", "content": "ahoy matey"}]},
    {
        "messages": [
            {"role": "system", "content": "answer with a colour"},
            {"role": "user", "content": "grass"},
            {"role": "assistant", "content": "green"},
            {"role": "user", "content": "blood"},
            {"role": "assistant", "content": "red"},
        ]
    },
]


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON record per line (a string is written as is: for malformed-line tests)."""
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_model(cache: Path, family: str, **options) -> Path:
    """A tiny model folder of `family`, built once under `cache` (seeded: the same bytes every time)."""
    from lora_train.dev.tiny_llm import write_tiny_llm

    suffix = "_".join(f"{k}-{bool(v)}" for k, v in sorted(options.items()))
    folder = cache / f"{family}{'_' + suffix if suffix else ''}"
    if not (folder / "config.json").is_file():
        write_tiny_llm(folder, family, **options)
    return folder
