"""Conversations -> token rows: rendered with the tokenizer's chat template, labels only on the assistant turns,
examples longer than max_length refused, truncated or dropped (and reported), optional packing.

The response spans are found in the rendered text, not by tokenizing pieces apart: the template renders the
conversation up to each assistant turn with the generation prompt (the prompt), then with that turn (prompt +
response + end-of-turn marker); the characters between the two are the response. The whole conversation is
tokenized once, as at inference, and a token is trained when its characters overlap a response span
(the tokenizer's offset mapping). So the end-of-turn marker is learned too: the model learns to stop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_train.llm.data import Conversation, LlmDataError

log = logging.getLogger(__name__)

IGNORE = -100  # label of a token the loss skips (prompt, padding); what torch's cross_entropy ignores by default
LISTED = 5  # lines named in a message


@dataclass
class TokenRow:
    """One training row: token ids, labels (IGNORE outside responses), position ids, the source lines in it."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    lines: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE)  # the first token is never predicted


@dataclass
class EncodingReport:
    """What encoding did to the data: counts, and the lines truncated or dropped."""

    examples: int = 0
    rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    longest: int = 0
    truncated: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.examples} examples -> {self.rows} rows, {self.tokens} tokens ({self.trained_tokens} trained), "
                f"longest {self.longest}")  # fmt: skip
        if self.truncated:
            text += f"; truncated {len(self.truncated)} (lines {_lines(self.truncated)})"
        if self.dropped:
            text += f"; dropped {len(self.dropped)} (lines {_lines(self.dropped)})"
        return text


def _lines(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:LISTED])) + (" ..." if len(numbers) > LISTED else "")


def resolve_chat_template(tokenizer: Any, template_file: str, model_dir: Path) -> str:
    """The Jinja template to render with: `template_file`'s text, else the tokenizer's own; none is an error."""
    if template_file:
        path = Path(template_file).expanduser()
        if not path.is_file():
            raise LlmDataError(f"chat_template file {str(path)!r} does not exist")
        return path.read_text(encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    if not template:
        raise LlmDataError(
            f"the tokenizer in {model_dir} has no chat template (no chat_template in tokenizer_config.json and no "
            "chat_template.jinja), so conversations cannot be rendered as the model expects; set chat_template: "
            "to a Jinja template file (the one the model was fine-tuned with)"
        )
    return template


def _render(tokenizer: Any, template: str, messages: list[dict], where: str, *, generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except (TemplateError, ValueError, TypeError) as exc:  # templates refuse roles they lack (raise_exception)
        raise LlmDataError(f"{where}: the chat template cannot render this conversation: {exc}") from None


def response_spans(tokenizer: Any, template: str, conversation: Conversation, where: str) -> tuple[str, list]:
    """The rendered conversation and the (start, end) character spans of its assistant turns."""
    messages = conversation.messages
    text = _render(tokenizer, template, messages, where, generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, template, messages[:index], where, generation_prompt=True)
        with_turn = _render(tokenizer, template, messages[: index + 1], where, generation_prompt=False)
        if not (with_turn.startswith(prompt) and text.startswith(with_turn)):
            raise LlmDataError(
                f"{where}: the chat template does not render this conversation turn by turn (the text up to "
                f"assistant message {index} is not a prefix of the whole); use a chat_template that does"
            )
        spans.append((len(prompt), len(with_turn)))
    return text, spans


def encode_conversation(tokenizer: Any, template: str, conversation: Conversation, where: str) -> TokenRow:
    """Token ids of the rendered conversation; labels are the ids inside assistant spans, IGNORE elsewhere."""
    text, spans = response_spans(tokenizer, template, conversation, where)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    labels = [
        token if any(end > a and start < b for a, b in spans) else IGNORE
        for token, (start, end) in zip(ids, offsets, strict=True)
    ]
    return TokenRow(ids, labels, list(range(len(ids))), [conversation.line])


def encode_all(
    tokenizer: Any, template: str, conversations: list[Conversation], source: Path, max_length: int, overlong: str
) -> tuple[list[TokenRow], EncodingReport]:
    """Every conversation encoded; overlong ones refused (naming the lines), truncated or dropped as configured."""
    if not getattr(tokenizer, "is_fast", False):
        raise LlmDataError("the tokenizer is not a fast (tokenizers-backed) tokenizer; response masks need its "
                           "offset mapping: add a tokenizer.json to the model folder")  # fmt: skip
    report = EncodingReport(examples=len(conversations))
    rows, too_long = [], []
    for conversation in conversations:
        row = encode_conversation(tokenizer, template, conversation, f"{source}, line {conversation.line}")
        report.longest = max(report.longest, len(row.input_ids))
        if len(row.input_ids) > max_length:
            too_long.append((conversation.line, len(row.input_ids)))
            if overlong == "drop":
                report.dropped.append(conversation.line)
                continue
            if overlong == "truncate":
                row = TokenRow(row.input_ids[:max_length], row.labels[:max_length], row.position_ids[:max_length],
                               row.lines)  # fmt: skip
                report.truncated.append(conversation.line)
        if row.trained_tokens == 0:  # a response cut off entirely trains nothing
            report.dropped.append(conversation.line)
            continue
        rows.append(row)
    if too_long and overlong == "error":
        listed = ", ".join(f"line {line} ({length} tokens)" for line, length in too_long[:LISTED])
        raise LlmDataError(
            f"{source}: {len(too_long)} example(s) are longer than max_length={max_length}: {listed}"
            f"{' ...' if len(too_long) > LISTED else ''}; raise max_length, shorten them, or set overlong to "
            "truncate or drop"
        )
    if not rows:
        raise LlmDataError(f"{source}: no example is left to train on ({report.summary()})")
    report.rows = len(rows)
    report.tokens = sum(len(r.input_ids) for r in rows)
    report.trained_tokens = sum(r.trained_tokens for r in rows)
    return rows, report


def pack_rows(rows: list[TokenRow], max_length: int) -> list[TokenRow]:
    """Greedy packing in data order: examples joined into rows of at most max_length tokens. Positions restart at
    every example (transformers then keeps examples from attending to each other); the first token of each
    example is never a target, so no example learns to predict the next one."""
    packed: list[TokenRow] = []
    current = TokenRow([], [], [], [])
    for row in rows:
        if current.input_ids and len(current.input_ids) + len(row.input_ids) > max_length:
            packed.append(current)
            current = TokenRow([], [], [], [])
        current.input_ids += row.input_ids
        current.labels += [IGNORE, *row.labels[1:]]
        current.position_ids += row.position_ids
        current.lines += row.lines
    if current.input_ids:
        packed.append(current)
    return packed
