"""Language-model data: jsonl records checked line by line, chat-template rendering with labels on the responses
only, max length refused / truncated / dropped with a report, packing."""

import pytest

from lora_train.dev.tiny_llm import write_tiny_tokenizer
from lora_train.llm import LlmDataError, load_conversations
from lora_train.llm.render import IGNORE, encode_all, pack_rows, resolve_chat_template
from tests.llm import MEMORISABLE, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _encode(tokenizer, path, max_length=256, overlong="error"):
    data = load_conversations(path)
    template = resolve_chat_template(tokenizer, "", path.parent)
    return encode_all(tokenizer, template, data.conversations, data.path, max_length, overlong)


def _trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row.labels if t != IGNORE])


def test_instruction_and_chat_records_become_chat_messages(tmp_path):
    data = load_conversations(write_jsonl(tmp_path / "d.jsonl", MEMORISABLE), system_prompt="be brief")
    first, second = data.conversations[0], data.conversations[1]
    assert first.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what colour is the sky?"},
        {"role": "assistant", "content": "blue"},
    ]
    assert second.messages[1]["content"] == "capital of france\n\none word"
    assert [c.line for c in data.conversations] == [1, 2, 3, 4]
    assert len(data.sha256) == 64


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([MEMORISABLE[0], "", MEMORISABLE[1]], "line 2 is empty"),
        ([MEMORISABLE[0], MEMORISABLE[1], '{"instruction": "x", "output": '], "line 3 is not valid JSON"),
        ([{"instruction": "x"}], "line 1: no non-empty assistant message"),
        ([{"prompt": "x", "completion": "y"}], "line 1: a record needs either 'messages'"),
        ([{"messages": [{"role": "bot", "content": "x"}]}], "line 1: messages[0] has role 'bot'"),
        ([{"instruction": "x", "output": "y", "extra": 1}], "line 1: unknown key(s) ['extra']"),
    ],
)
def test_bad_jsonl_lines_are_named_with_their_line_number(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(LlmDataError) as caught:
        load_conversations(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_labels_cover_only_the_assistant_turns_and_their_end_marker(tmp_path, tokenizer):
    rows, report = _encode(tokenizer, write_jsonl(tmp_path / "d.jsonl", MEMORISABLE))
    assert _trained_text(tokenizer, rows[0]) == "blue<|end|>\n"
    assert _trained_text(tokenizer, rows[2]) == "ahoy matey<|end|>\n"
    # Two assistant turns in one conversation: both trained, the user turn between them not.
    assert _trained_text(tokenizer, rows[3]) == "green<|end|>\nred<|end|>\n"
    assert report.examples == 4 and report.rows == 4
    assert report.trained_tokens == sum(row.trained_tokens for row in rows) > 0
    # The whole conversation is tokenized as one text, as at inference.
    full = tokenizer.apply_chat_template(MEMORISABLE[2]["messages"], tokenize=False)
    assert rows[2].input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]


def test_a_tokenizer_without_chat_template_is_refused_with_what_to_set(tmp_path):
    bare = write_tiny_tokenizer(tmp_path / "bare", chat_template=None)
    with pytest.raises(LlmDataError, match=r"has no chat template.*set chat_template"):
        resolve_chat_template(bare, "", tmp_path / "bare")
    template_file = tmp_path / "template.jinja"
    template_file.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    assert resolve_chat_template(bare, str(template_file), tmp_path) == template_file.read_text()


def test_overlong_examples_are_refused_naming_lines_unless_truncated_or_dropped(tmp_path, tokenizer):
    long_answer = {"instruction": "count", "output": " ".join(str(i % 10) for i in range(200))}
    path = write_jsonl(tmp_path / "d.jsonl", [MEMORISABLE[0], long_answer, MEMORISABLE[1]])
    with pytest.raises(LlmDataError, match=r"1 example\(s\) are longer than max_length=64: line 2 \(\d+ tokens\)"):
        _encode(tokenizer, path, max_length=64)
    rows, report = _encode(tokenizer, path, max_length=64, overlong="truncate")
    assert report.truncated == [2] and len(rows) == 3 and len(rows[1].input_ids) == 64
    assert "truncated 1 (lines 2)" in report.summary()
    rows, report = _encode(tokenizer, path, max_length=64, overlong="drop")
    assert report.dropped == [2] and [row.lines for row in rows] == [[1], [3]]


def test_packing_joins_examples_up_to_max_length_with_restarting_positions(tmp_path, tokenizer):
    rows, _ = _encode(tokenizer, write_jsonl(tmp_path / "d.jsonl", MEMORISABLE))
    lengths = [len(row.input_ids) for row in rows]
    packed = pack_rows(rows, max_length=sum(lengths[:2]))
    assert packed[0].lines == [1, 2]
    assert len(packed[0].input_ids) == sum(lengths[:2])
    assert packed[0].position_ids == list(range(lengths[0])) + list(range(lengths[1]))
    assert packed[0].labels[lengths[0]] == IGNORE  # no example learns to predict the next one's first token
    assert sum(len(row.input_ids) for row in packed) == sum(lengths)


def test_a_template_that_refuses_a_role_names_the_line(tmp_path, tokenizer):
    refusing = tmp_path / "no_system.jinja"
    refusing.write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}\n{% endfor %}",
        encoding="utf-8",
    )
    path = write_jsonl(tmp_path / "d.jsonl", [MEMORISABLE[0], MEMORISABLE[3]])
    data = load_conversations(path)
    template = resolve_chat_template(tokenizer, str(refusing), tmp_path)
    with pytest.raises(LlmDataError, match=r"line 2: the chat template cannot render .*System role not supported"):
        encode_all(tokenizer, template, data.conversations, data.path, 256, "error")
