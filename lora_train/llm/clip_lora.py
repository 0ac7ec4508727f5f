"""What the "Train LLM LoRA" node trains on and with: `ClipLoraConfig` (its widgets) and the prompt/response pairs
read from a .jsonl file (the CLI's formats) or the node's text box. No torch and no ComfyUI here: the host adapter
(`lora_train.host.llm_clip`) tokenizes the pairs with the CLIP's own tokenizer and trains.

ComfyUI's Generate Text node sends one prompt to the model and decodes what follows; so each record becomes one
(prompt, response) pair: the response is the record's assistant message, the prompt its other messages joined by a
blank line (a record's system message is part of the prompt: the CLIP's tokenizer adds its own template around it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lora_train.llm.config import NETWORK_CHOICES, SCHEDULER_CHOICES, TARGET_CHOICES
from lora_train.llm.data import LlmDataError, load_conversations, record_messages
from lora_train.settings import Settings, SettingsError, setting


@dataclass
class ClipLoraConfig(Settings):
    """Settings of a LoRA trained on the LLM behind a CLIP (the Train LLM LoRA node). Defaults suit a few dozen to a
    few hundred short examples on a 0.6-8B text encoder."""

    output_name: str = setting("my_llm_lora", "File name (without .safetensors) in the loras folder.")
    steps: int = setting(100, "Optimizer steps to train.", min=1, max=1_000_000)
    learning_rate: float = setting(1e-4, "Peak learning rate (1e-4 to 5e-4 is usual for LLM LoRAs).", min=1e-8,
                                   max=1.0)  # fmt: skip
    rank: int = setting(16, "LoRA rank r: the adapter's capacity. 8-64 is typical.", min=1, max=1024)
    alpha: float = setting(16.0, "LoRA alpha: updates are scaled by alpha/rank.", min=0.0001, max=4096)
    batch_size: int = setting(4, "Examples per optimizer step.", min=1, max=1024)
    max_length: int = setting(
        512, "Longest example in tokens (prompt with the CLIP's template + response); longer ones are refused, "
        "naming the line.", min=8, max=1_048_576,
    )  # fmt: skip
    seed: int = setting(0, "Seed for adapter init and data order: same seed, same LoRA.", min=0, max=2**63 - 1)
    network: str = setting("lora", "Adapter type: lora, or dora (weight-decomposed LoRA).", choices=NETWORK_CHOICES,
                           advanced=True)  # fmt: skip
    targets: str = setting(
        "all_linear",
        "Which layers get adapters: every linear layer of the decoder blocks, or only the attention projections.",
        choices=TARGET_CHOICES,
        advanced=True,
    )
    lr_scheduler: str = setting("constant", "Learning-rate schedule.", choices=SCHEDULER_CHOICES, advanced=True)
    max_grad_norm: float = setting(1.0, "Clip the adapter gradient norm; 0 = no clipping.", min=0.0, max=1e6,
                                   advanced=True)  # fmt: skip
    use_default_template: bool = setting(
        True,
        "Wrap each prompt in the CLIP's built-in template, as Generate Text does with use_default_template on "
        "(keep both the same).",
        advanced=True,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.output_name
        if not name.strip() or any(c in name for c in "/\\\0") or name in (".", ".."):
            raise SettingsError(f"output_name must be a plain file name, got {name!r}")


@dataclass(frozen=True)
class PromptPair:
    """One training example: what Generate Text receives, what it should answer, and where it came from."""

    prompt: str
    response: str
    where: str


@dataclass
class PairData:
    """Every pair of a run and the sha256 of its source text (recorded in the LoRA's metadata)."""

    pairs: list[PromptPair]
    sha256: str
    source: str


def pair_from_messages(messages: list[dict[str, str]], where: str) -> PromptPair:
    """(prompt, response) of one checked record: one assistant message, last; the rest is the prompt."""
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(answers) != 1 or answers[0] != len(messages) - 1:
        raise LlmDataError(
            f"{where}: Generate Text answers one prompt, so a record needs exactly one assistant message, the last "
            f"one (this one has {len(answers)}); split multi-turn chats into one record per answer"
        )
    prompt = "\n\n".join(m["content"] for m in messages[:-1] if m["content"].strip())
    return PromptPair(prompt, messages[-1]["content"], where)


def pairs_from_file(path: str | Path) -> PairData:
    """Pairs of a .jsonl file in the CLI's formats (instruction/input/output or chat `messages`)."""
    data = load_conversations(path)
    pairs = [pair_from_messages(c.messages, f"{data.path}, line {c.line}") for c in data.conversations]
    return PairData(pairs, data.sha256, str(data.path))


def pairs_from_text(text: str) -> PairData:
    """Pairs typed into the node: one example per non-empty line. A line starting with `{` is a JSON record (as in
    the .jsonl file); any other line is text the model should write when Generate Text gets an empty prompt."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"text, line {number}"
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LlmDataError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
            pairs.append(pair_from_messages(record_messages(record, where), where))
        else:
            pairs.append(PromptPair("", line.strip(), where))
    if not pairs:
        raise LlmDataError("no training text: type examples into `text` (one per line) or set train_data (.jsonl)")
    return PairData(pairs, hashlib.sha256(text.encode()).hexdigest(), "text")


def load_pairs(train_data: str, text: str) -> PairData:
    """The node's data: `train_data` (a .jsonl path) when set, else the `text` box; both set is refused."""
    if train_data.strip() and text.strip():
        raise LlmDataError("set either train_data (a .jsonl file) or text, not both: clear the one you do not mean")
    if train_data.strip():
        return pairs_from_file(train_data.strip())
    return pairs_from_text(text)
