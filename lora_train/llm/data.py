"""Training conversations from a .jsonl file: instruction/input/output records or chat `messages`, every line checked
before anything is tokenized, so a bad line is named (file and line number) before any work starts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
INSTRUCTION_KEYS = ("instruction", "input", "output", "system")


class LlmDataError(ValueError):
    """The data file is unusable; the message names the file, the line and what to change."""


@dataclass
class Conversation:
    """One training example: chat messages (the assistant turns are what the loss trains) and its source line."""

    messages: list[dict[str, str]]
    line: int


@dataclass
class ConversationData:
    """Every conversation of a data file, and the file's sha256 (recorded in the adapter's metadata)."""

    path: Path
    conversations: list[Conversation]
    sha256: str


def load_conversations(path: str | Path, system_prompt: str = "") -> ConversationData:
    """Read and check every line of `path`; an empty, malformed or incomplete line raises LlmDataError naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlmDataError(f"train_data {str(path)!r} does not exist; point train_data at a .jsonl file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows editors) is not part of line 1
    except UnicodeDecodeError as exc:
        raise LlmDataError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from None
    conversations = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}, line {number}"
        if not line.strip():
            raise LlmDataError(f"{where} is empty; remove it (every line must hold one JSON record)")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LlmDataError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        conversations.append(Conversation(record_messages(record, where, system_prompt), number))
    if not conversations:
        raise LlmDataError(f"{path} holds no records; add one JSON record per line")
    return ConversationData(path, conversations, hashlib.sha256(raw).hexdigest())


def record_messages(record: Any, where: str, system_prompt: str = "") -> list[dict[str, str]]:
    """The chat messages of one record (either format), checked: roles known, contents strings, an assistant turn."""
    if not isinstance(record, dict):
        raise LlmDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = _chat_messages(record["messages"], where)
    elif "instruction" in record or "output" in record:
        messages = _instruction_messages(record, where, system_prompt)
    else:
        raise LlmDataError(
            f"{where}: a record needs either 'messages' (a list of {{role, content}}) or 'instruction' and 'output'; "
            f"got keys {sorted(record)}"
        )
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise LlmDataError(f"{where}: no non-empty assistant message, so there is nothing to train on")
    return messages


def _chat_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise LlmDataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise LlmDataError(f"{where}: messages[{index}] must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise LlmDataError(f"{where}: messages[{index}] has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise LlmDataError(f"{where}: messages[{index}].content must be a string, got {type(content).__name__}")
        checked.append({"role": role, "content": content})
    return checked


def _instruction_messages(record: dict, where: str, system_prompt: str) -> list[dict[str, str]]:
    unknown = sorted(set(record) - set(INSTRUCTION_KEYS))
    if unknown:
        raise LlmDataError(
            f"{where}: unknown key(s) {unknown}; an instruction record has {', '.join(INSTRUCTION_KEYS)}"
        )
    for key in INSTRUCTION_KEYS:
        if key in record and not isinstance(record[key], str):
            raise LlmDataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    instruction, extra = record.get("instruction", ""), record.get("input", "")
    if not instruction.strip():
        raise LlmDataError(f"{where}: 'instruction' is missing or empty")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = record.get("system", system_prompt)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": record.get("output", "")}]
