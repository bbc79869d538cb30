"""Tests for tuning/data/pipeline.py: flags or data config in, input_ids + labels out.

Why: every job goes through prepare_datasets. The flag-only modes must pick exactly what fms
picks; every data-config shape fms ships must run; mixing, splitting and streaming must be
deterministic; and a run whose samples train nothing must stop with the count, the dataset, an
example and the fix instead of silently training on nothing (fms exits 0 there).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import string
import textwrap
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, IterableDataset

from tuning.config.schema import DataArgs
from tuning.data.labels.base import IGNORE_INDEX
from tuning.data.pipeline import prepare_datasets
from tuning.data.plan import plan_data
from tuning.errors import ConfigError, DataError

X = IGNORE_INDEX
EOS = 2
TINY = Path(__file__).resolve().parents[3] / "artifacts" / "tiny-llama"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def arithmetic(n: int, start: int = 0) -> list[dict]:
    return [{"input": f"Add {i} and 1.", "output": f"{i + 1}"} for i in range(start, start + n)]


def complaints(n: int) -> list[dict]:
    return [
        {"output": f"### Input: order {i} arrived broken\n\n### Response: complaint"}
        for i in range(n)
    ]


def chats(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": f"What is {i}+1?"},
                {"role": "assistant", "content": f"{i + 1}."},
            ]
        }
        for i in range(n)
    ]


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != X])


@pytest.fixture
def config_file(tmp_path):
    def write(text: str, name: str = "data_config.yaml") -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return str(path)

    return write


# --- flags only (fms's legacy modes) ------------------------------------------------------------


def test_input_output_rows(prepare, tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "io.jsonl", [{"input": "Add 0 and 8.", "output": "8"}])
    prepared = prepare(training_data_path=str(data))
    assert prepared.train.column_names == ["input_ids", "labels"]
    assert prepared.train[0]["input_ids"] == [623, 964, 347, 553, 21, 553, EOS]
    assert prepared.train[0]["labels"] == [X] * 5 + [553, EOS]
    assert prepared.eval is None


def test_dataset_text_field_with_response_template(prepare, tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "t.jsonl", complaints(3))
    prepared = prepare(
        training_data_path=str(data), dataset_text_field="output", response_template="Response:"
    )
    for row in prepared.train:
        assert trained_text(tiny_tokenizer, row) == " complaint</s>"


def test_dataset_text_field_alone_trains_the_whole_text_plus_eos(prepare, tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": "Add 0 and 8."}])
    prepared = prepare(training_data_path=str(data), dataset_text_field="text")
    assert prepared.train[0]["labels"] == [623, 964, 347, 553, 21, EOS]


def test_data_formatter_template(prepare, tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "io.jsonl", [{"input": "Add 0 and 8.", "output": "8"}])
    prepared = prepare(
        training_data_path=str(data),
        data_formatter_template="### Q: {{input}}\n### A: {{output}}",
        response_template="\n### A:",
    )
    prompt = tiny_tokenizer("### Q: Add 0 and 8.\n### A:", add_special_tokens=False)["input_ids"]
    assert prepared.train[0]["input_ids"] == [*prompt, 553, EOS]
    assert prepared.train[0]["labels"] == [X] * len(prompt) + [553, EOS]


def test_data_formatter_template_needs_a_response_template(prepare, tmp_path):
    data = write_jsonl(tmp_path / "io.jsonl", arithmetic(2))
    with pytest.raises(ConfigError, match="--data_formatter_template needs --response_template"):
        prepare(training_data_path=str(data), data_formatter_template="{{input}}")


def test_messages_rows_use_the_chat_template(prepare, tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", chats(3))
    prepared = prepare(training_data_path=str(data))
    assert [trained_text(tiny_tokenizer, r) for r in prepared.train] == [
        "1.<|end|>",
        "2.<|end|>",
        "3.<|end|>",
    ]
    audit = prepared.report.dataset("training_data").audit
    assert audit is not None and audit.rows_checked == 3 and audit.row_agreement_pct == 100.0


def test_conversation_field_with_response_and_instruction_templates(
    prepare, tmp_path, tiny_tokenizer
):
    rows = [{"chat": chats(1)[0]["messages"]}]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    prepared = prepare(
        training_data_path=str(data),
        dataset_conversation_field="chat",
        response_template="<|assistant|>\n",
        instruction_template="<|user|>",
    )
    assert trained_text(tiny_tokenizer, prepared.train[0]) == "1.<|end|>\n</s>"


def test_pretokenized_rows_pass_through(prepare, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"input_ids": [5, 6, 7], "labels": [X, 6, 7]}])
    prepared = prepare(training_data_path=str(data), validation_data_path=str(data))
    assert prepared.train[0] == {"input_ids": [5, 6, 7], "labels": [X, 6, 7]}
    assert len(prepared.eval) == 1


def test_long_pretokenized_rows_keep_the_response_and_bos(prepare, tmp_path):
    row = {"input_ids": [1, 10, 11, 12, 13, 14, 15, 16, 17], "labels": [X] * 7 + [16, 17]}
    data = write_jsonl(tmp_path / "p.jsonl", [row, {"input_ids": [1, 9], "labels": [X, 9]}])
    prepared = prepare(max_len=5, training_data_path=str(data))
    assert prepared.train[0] == {"input_ids": [1, 14, 15, 16, 17], "labels": [X, X, X, 16, 17]}
    assert prepared.train[1] == {"input_ids": [1, 9], "labels": [X, 9]}
    report = prepared.report.dataset("training_data")
    assert (report.truncated_prompt_rows, report.truncated_response_rows) == (1, 0)


def test_pretokenized_rows_refuse_formatting_flags(prepare, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"input_ids": [5], "labels": [5]}])
    with pytest.raises(ConfigError, match=r"pretokenized.*--response_template"):
        prepare(training_data_path=str(data), response_template="x")


def test_unrecognised_columns(prepare, tmp_path):
    data = write_jsonl(tmp_path / "x.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(ConfigError, match="columns are question, answer"):
        prepare(training_data_path=str(data))


def test_flag_conflicts(prepare, tmp_path, config_file):
    with pytest.raises(ConfigError, match="both set"):
        prepare(data_config_path="x.yaml", training_data_path="y.jsonl")
    with pytest.raises(ConfigError, match="no training data"):
        prepare()


@pytest.fixture(scope="module")
def bos_adding_tokenizer():
    """The tiny tokenizer, made to put BOS in front of plain text (as Llama's does)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY))
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    assert tokenizer("a")["input_ids"] == [1, 72]
    return tokenizer


def test_plain_text_gets_the_tokenizers_bos_and_chat_text_keeps_one(bos_adding_tokenizer, tmp_path):
    io = write_jsonl(tmp_path / "io.jsonl", [{"input": "Add 0 and 8.", "output": "8"}])
    chat = write_jsonl(tmp_path / "chat.jsonl", chats(1))
    cache = str(tmp_path / "cache")
    row = prepare_datasets(
        plan_data(DataArgs(training_data_path=str(io))), bos_adding_tokenizer, 64, cache_dir=cache
    ).train[0]
    assert row["input_ids"] == [1, 623, 964, 347, 553, 21, 553, EOS]
    assert row["labels"] == [X] * 6 + [553, EOS]
    row = prepare_datasets(
        plan_data(DataArgs(training_data_path=str(chat))), bos_adding_tokenizer, 64, cache_dir=cache
    ).train[0]
    assert row["input_ids"][:2] == [1, 4]  # "<s><|system|>": the template's BOS, only once


# --- zero-label samples and truncation ----------------------------------------------------------


def test_response_template_never_found_is_an_error_with_count_example_and_fix(prepare, tmp_path):
    # Planning reads the first rows only: the rows past them are the data stage's to check.
    bad = [{"output": f"### Input: order {i} arrived broken ### Response: x"} for i in range(4)]
    data = write_jsonl(tmp_path / "t.jsonl", [*complaints(5), *bad])
    with pytest.raises(DataError) as info:
        prepare(
            training_data_path=str(data),
            dataset_text_field="output",
            response_template="\n\n### Response:",
        )
    message = str(info.value)
    assert "4 of 9 samples in dataset 'training_data'" in message
    assert "order 0 arrived broken" in message
    assert "'\\n\\n### Response:' never occurs" in message
    assert "leading whitespace/newline" in message


def test_zero_label_tolerance_drops_and_counts(prepare, tmp_path):
    rows = [*complaints(7), {"output": "no template here"}]  # past the rows planning reads
    data = write_jsonl(tmp_path / "t.jsonl", rows)
    args = dict(training_data_path=str(data), dataset_text_field="output")
    with pytest.raises(DataError, match="1 of 8 samples"):
        prepare(**args, response_template="\n### Response:")
    prepared = prepare(**args, response_template="\n### Response:", zero_label_tolerance=0.125)
    assert len(prepared.train) == 7
    report = prepared.report.dataset("training_data")
    assert (report.rows, report.zero_label_rows) == (8, 1)
    assert report.zero_label_example == "no template here</s>"


def test_truncation_is_counted_per_dataset(prepare, tmp_path, caplog):
    rows = [{"input": "Add 0 and 8. " * 5, "output": "8"}, {"input": "Add 0.", "output": "1"}]
    data = write_jsonl(tmp_path / "io.jsonl", rows)
    with caplog.at_level("INFO", logger="tuning.data.pipeline"):
        prepared = prepare(max_len=8, training_data_path=str(data))
    report = prepared.report.dataset("training_data")
    assert (report.truncated_prompt_rows, report.truncated_response_rows) == (1, 0)
    assert prepared.train[0]["labels"][-2:] == [553, EOS]  # the response (" 8") survived
    assert "1 with the prompt trimmed" in caplog.text
    assert prepared.report.to_dict()["datasets"][0]["truncated_prompt_rows"] == 1


# --- data config: mixing, splitting, streaming ---------------------------------------------------


def _two_datasets(tmp_path, config_file, *, sampling: bool, extra: str = "") -> str:
    write_jsonl(tmp_path / "a.jsonl", arithmetic(10))
    write_jsonl(tmp_path / "b.jsonl", arithmetic(30, start=100))
    sampling_a = "    sampling: 0.5\n" if sampling else ""
    sampling_b = "    sampling: 0.5\n" if sampling else ""
    return config_file(
        "dataprocessor:\n"
        "  seed: 7\n"
        f"{extra}"
        "datasets:\n"
        "  - name: a\n"
        f"{sampling_a}"
        "    data_paths: [a.jsonl]\n"
        "    data_handlers:\n"
        "      - name: tokenize_and_apply_input_masking\n"
        "        arguments: {remove_columns: all}\n"
        "  - name: b\n"
        f"{sampling_b}"
        "    data_paths: [b.jsonl]\n"
        "    data_handlers:\n"
        "      - name: tokenize_and_apply_input_masking\n"
        "        arguments: {remove_columns: all}\n"
    )


def test_sampling_interleaves_with_the_seed(prepare, tmp_path, config_file):
    path = _two_datasets(tmp_path, config_file, sampling=True)
    first = prepare(data_config_path=path)
    second = prepare(data_config_path=path)
    counts = [(m.name, m.rows) for m in first.report.mixture]
    assert counts == [(m.name, m.rows) for m in second.report.mixture]
    assert first.train["input_ids"] == second.train["input_ids"]
    # all_exhausted: b (30 rows) is used up once, a (10 rows) is oversampled
    rows = dict(counts)
    assert rows["b"] == 30 and rows["a"] > 10
    assert len(first.train) == rows["a"] + rows["b"]
    assert sum(m.tokens for m in first.report.mixture) == sum(
        len(r) for r in first.train["input_ids"]
    )


def test_first_exhausted_stops_with_the_smallest(prepare, tmp_path, config_file):
    path = _two_datasets(
        tmp_path,
        config_file,
        sampling=True,
        extra="  sampling_stopping_strategy: first_exhausted\n",
    )
    rows = {m.name: m.rows for m in prepare(data_config_path=path).report.mixture}
    assert rows["a"] == 10 and rows["b"] < 30


def test_without_sampling_datasets_are_concatenated(prepare, tmp_path, config_file):
    prepared = prepare(data_config_path=_two_datasets(tmp_path, config_file, sampling=False))
    assert len(prepared.train) == 40
    assert [(m.name, m.rows) for m in prepared.report.mixture] == [("a", 10), ("b", 30)]


def test_per_dataset_split_feeds_the_eval_set(prepare, tmp_path, config_file, tiny_tokenizer):
    write_jsonl(tmp_path / "a.jsonl", arithmetic(10))
    write_jsonl(tmp_path / "b.jsonl", arithmetic(5, start=50))
    path = config_file(
        """\
        datasets:
          - name: a
            split: {train: 0.8, validation: 0.2}
            data_paths: [a.jsonl]
            data_handlers:
              - name: tokenize_and_apply_input_masking
                arguments: {remove_columns: all}
          - name: b
            split: {train: 0, validation: 0.4}
            data_paths: [b.jsonl]
            data_handlers:
              - name: tokenize_and_apply_input_masking
                arguments: {remove_columns: all}
        """
    )
    prepared = prepare(data_config_path=path)
    assert (len(prepared.train), len(prepared.eval)) == (8, 4)
    report = {d.name: (d.train_rows, d.eval_rows) for d in prepared.report.datasets}
    assert report == {"a": (8, 2), "b": (0, 2)}
    train = {trained_text(tiny_tokenizer, r) for r in prepared.train}
    evaluation = [trained_text(tiny_tokenizer, r) for r in prepared.eval]
    assert not train & set(evaluation)  # no row in both
    assert prepare(data_config_path=path).eval["input_ids"] == prepared.eval["input_ids"]


def test_per_dataset_shuffle_is_seeded(prepare, tmp_path, config_file):
    write_jsonl(tmp_path / "a.jsonl", arithmetic(30))
    body = """\
        dataprocessor: {{seed: {seed}}}
        datasets:
          - name: a
            shuffle: {shuffle}
            data_paths: [a.jsonl]
        """
    ordered = prepare(data_config_path=config_file(body.format(seed=1, shuffle="false"), "o.yaml"))
    once = prepare(data_config_path=config_file(body.format(seed=1, shuffle="true"), "s.yaml"))
    again = prepare(data_config_path=config_file(body.format(seed=1, shuffle="true"), "t.yaml"))
    other = prepare(data_config_path=config_file(body.format(seed=2, shuffle="true"), "u.yaml"))
    assert once.train["input_ids"] == again.train["input_ids"]
    assert once.train["input_ids"] != ordered.train["input_ids"]
    assert once.train["input_ids"] != other.train["input_ids"]
    assert sorted(once.train["input_ids"]) == sorted(ordered.train["input_ids"])


def test_split_shuffles_unless_shuffle_is_false(prepare, tmp_path, config_file, tiny_tokenizer):
    write_jsonl(tmp_path / "a.jsonl", arithmetic(10))
    body = """\
        datasets:
          - name: a
            split: {{train: 0.8, validation: 0.2}}
            {shuffle}
            data_paths: [a.jsonl]
        """
    default = prepare(data_config_path=config_file(body.format(shuffle=""), "d.yaml"))
    kept = prepare(data_config_path=config_file(body.format(shuffle="shuffle: false"), "k.yaml"))
    texts = [trained_text(tiny_tokenizer, row) for row in kept.eval]
    assert texts == [" 9</s>", " 10</s>"]  # contiguous: the last two rows validate
    assert list(default.eval["input_ids"]) != list(kept.eval["input_ids"])  # seeded random rows
    everything = [*default.train["input_ids"], *default.eval["input_ids"]]
    assert sorted(everything) == sorted([*kept.train["input_ids"], *kept.eval["input_ids"]])


def test_streaming_yields_the_same_first_rows(prepare, tmp_path, config_file):
    write_jsonl(tmp_path / "a.jsonl", arithmetic(20))
    body = """\
        datasets:
          - name: a
            data_paths: [a.jsonl]
            data_handlers:
              - name: tokenize_and_apply_input_masking
                arguments: {remove_columns: all, batched: true}
        """
    eager = prepare(data_config_path=config_file(body, "eager.yaml"))
    streamed = prepare(
        data_config_path=config_file("dataprocessor: {streaming: true}\n" + textwrap.dedent(body))
    )
    assert streamed.streaming and isinstance(streamed.train, IterableDataset)
    assert not eager.streaming
    first = [dict(r) for r in streamed.train.take(5)]
    assert first == [eager.train[i] for i in range(5)]
    assert streamed.report.dataset("a").sampled


def test_streaming_refuses_a_split(prepare, tmp_path, config_file):
    write_jsonl(tmp_path / "a.jsonl", arithmetic(5))
    path = config_file(
        """\
        dataprocessor: {streaming: true}
        datasets:
          - name: a
            split: {train: 0.8, validation: 0.2}
            data_paths: [a.jsonl]
        """
    )
    with pytest.raises(ConfigError, match="split is not supported with streaming"):
        prepare(data_config_path=path)


def test_streaming_config_in_memory_when_not_allowed(tiny_tokenizer, tmp_path, config_file):
    write_jsonl(tmp_path / "a.jsonl", arithmetic(5))
    path = config_file(
        """\
        dataprocessor: {streaming: true}
        datasets:
          - name: a
            data_paths: [a.jsonl]
        """
    )
    prepared = prepare_datasets(
        plan_data(DataArgs(data_config_path=path)), tiny_tokenizer, 64, streaming_ok=False
    )
    assert not prepared.streaming and len(prepared.train) == 5


def test_odm_is_refused(prepare, tmp_path, config_file):
    write_jsonl(tmp_path / "a.jsonl", arithmetic(5))
    path = config_file(
        """\
        dataprocessor: {type: odm, odm: {gamma: 0.1}}
        datasets:
          - name: a
            sampling: 1.0
            data_paths: [a.jsonl]
        """
    )
    with pytest.raises(ConfigError, match=r"online data mixing \(ODM\) is not built"):
        prepare(data_config_path=path)


def test_text_ending_chain_with_flags_gets_a_completion_mask(
    prepare, tmp_path, config_file, tiny_tokenizer
):
    write_jsonl(tmp_path / "io.jsonl", [{"input": "Add 0 and 8.", "output": "8"}])
    path = config_file(
        """\
        datasets:
          - name: formatted
            data_paths: [io.jsonl]
            data_handlers:
              - name: apply_custom_jinja_template
                arguments:
                  remove_columns: all
                  fn_kwargs:
                    formatted_text_column_name: formatted_text
                    template: "### Q: {{input}}\\n### A: {{output}}"
        """
    )
    prepared = prepare(data_config_path=path, response_template="\n### A:")
    assert trained_text(tiny_tokenizer, prepared.train[0]) == " 8</s>"


def test_handler_problems_are_found_before_data_is_read(prepare, tmp_path, config_file):
    path = config_file(
        """\
        datasets:
          - name: a
            data_paths: [missing.jsonl]
            data_handlers:
              - name: tokenize_and_apply_input_masking
                arguments:
                  fn_kwargs: {input_colum_name: x}
        """
    )
    with pytest.raises(ConfigError, match=r"datasets\[0\].data_handlers\[0\].arguments.fn_kwargs"):
        prepare(data_config_path=path)


def test_report_is_json_serialisable(prepare, tmp_path, config_file):
    prepared = prepare(data_config_path=_two_datasets(tmp_path, config_file, sampling=True))
    data = json.loads(json.dumps(prepared.report.to_dict()))
    assert [d["name"] for d in data["datasets"]] == ["a", "b"]
    assert data["datasets"][0]["trained_pct"] > 0
    assert "training mixture: a:" in prepared.report.table()


# --- fms's shipped data-config shapes -------------------------------------------------------------
# The shapes of fms-hf-tuning's tests/artifacts/predefined_data_configs/*.yaml, written here with
# our own data ($io, $chat, ... are filled with tmp paths). Each maps to the extra flags fms's
# tests pass with it.

GRANITE_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "Today's Date: " + strftime_now('%B %d, %Y') + "." %}
    {%- if 'citations' in controls and documents %}
        {%- set system_message = system_message + ' Cite.' %}
    {%- endif %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\\n' }}
{%- for message in loop_messages %}
    {{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>'
        + message['content'] + '<|end_of_text|>\\n' }}
    {%- if loop.last and add_generation_prompt %}
        {{- '<|start_of_role|>assistant<|end_of_role|>' }}
    {%- endif %}
{%- endfor %}
"""

FMS_TEST_TEMPLATE = """\
{% for message in messages['messages'] %}
  {% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token }}
  {% elif message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + eos_token }}
  {% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content']
      + eos_token }}
  {% endif %}
{% endfor %}
"""

INPUT_MASKING = """\
    data_handlers:
      - name: tokenize_and_apply_input_masking
        arguments:
          remove_columns: all
          batched: false
          fn_kwargs:
            input_column_name: input
            output_column_name: output
            add_eos_token: true
"""
CHAT_MASKING = """\
    data_handlers:
      - name: tokenize_and_apply_chat_template_with_masking
        arguments:
          remove_columns: all
          fn_kwargs:
            max_seq_length: 1024
            conversation_column: "messages"
"""
JINJA_FLAGS = {"dataset_text_field": "formatted_text", "response_template": "\n### Response:"}
CHAT_TEXT_FLAGS = {
    "dataset_text_field": "formatted_chat_data",
    "response_template": "<|assistant|>\n",
    "instruction_template": "<|user|>",
}
GRANITE_FLAGS = {
    "dataset_text_field": "formatted_chat_data",
    "response_template": "<|start_of_role|>assistant<|end_of_role|>",
    "instruction_template": "<|start_of_role|>user<|end_of_role|>",
}

FMS_SHAPES: dict[str, tuple[str, dict]] = {
    "tokenize_and_apply_input_masking": (
        "dataprocessor:\n  type: default\ndatasets:\n  - name: text_dataset\n"
        "    data_paths: ['$io']\n" + INPUT_MASKING,
        {},
    ),
    "tokenize_and_apply_input_masking_streaming": (
        "dataprocessor:\n  type: default\n  streaming: true\ndatasets:\n  - name: s\n"
        "    data_paths: ['$io']\n"
        + INPUT_MASKING.replace("input_column_name", "input_field_name").replace(
            "output_column_name", "output_field_name"
        ),
        {},
    ),
    "multiple_datasets_with_sampling": (
        "dataprocessor:\n  type: default\n  sampling_stopping_strategy: first_exhausted\n"
        "  seed: 66\ndatasets:\n"
        + "".join(
            f"  - name: dataset_{i}\n    sampling: {share}\n    data_paths: ['$io']\n"
            + INPUT_MASKING
            for i, share in ((1, 0.3), (2, 0.4), (3, 0.3))
        ),
        {},
    ),
    "multiple_datasets_with_sampling_and_split": (
        "dataprocessor:\n  type: default\n  sampling_stopping_strategy: first_exhausted\n"
        "  seed: 66\ndatasets:\n"
        + "".join(
            f"  - name: dataset_{i}\n    split:\n      train: {t}\n      validation: {v}\n"
            + (f"    sampling: {s}\n" if s else "")
            + "    data_paths: ['$io']\n"
            + INPUT_MASKING
            for i, t, v, s in (
                (1, 0.8, 0.2, 0.3),
                (2, 0.6, 0.2, 0.4),
                (3, 0.4, 0.1, 0.3),
                (4, 0.0, 0.3, None),
            )
        ),
        {},
    ),
    "multiple_datasets_with_sampling_and_split_2": (
        "dataprocessor:\n  type: default\n  sampling_stopping_strategy: first_exhausted\n"
        "  seed: 66\ndatasets:\n"
        "  - name: d1\n    split: {train: 0.8, validation: 0.2}\n    sampling: 0.6\n"
        "    data_paths: ['$io']\n" + INPUT_MASKING + "  - name: d2\n    split: {train: 0.6}\n"
        "    sampling: 0.4\n    data_paths: ['$io2']\n" + INPUT_MASKING + "  - name: d3\n"
        "    split: {validation: 0.1}\n    data_paths: ['$io']\n" + INPUT_MASKING + "  - name: d4\n"
        "    split: {train: 0.0, validation: 0.3}\n    data_paths: ['$io2']\n" + INPUT_MASKING,
        {},
    ),
    "apply_custom_jinja_template": (
        """\
dataprocessor:
  type: default
datasets:
  - name: apply_custom_data_jinja_template
    data_paths: ['$io']
    data_handlers:
      - name: apply_custom_jinja_template
        arguments:
          remove_columns: all
          batched: false
          fn_kwargs:
            formatted_text_column_name: formatted_text
            template: "### Input: {{input}} \\n\\n### Response: {{output}}"
            add_eos_token: true
""",
        JINJA_FLAGS,
    ),
    "apply_custom_template_streaming_older_spelling": (
        """\
dataprocessor:
  type: default
  streaming: true
datasets:
  - name: apply_custom_data_template
    data_paths: ['$io']
    data_handlers:
      - name: apply_custom_data_formatting_template
        arguments:
          remove_columns: all
          batched: false
          fn_kwargs:
            dataset_text_field: formatted_text
            template: "### Input: {{input}} \\n\\n### Response: {{output}}"
""",
        JINJA_FLAGS,
    ),
    "tokenize_using_handler_and_train": (
        """\
dataprocessor:
  type: default
datasets:
  - name: non_tokenized_dataset
    data_paths: ['$text']
    data_handlers:
      - name: tokenize
        arguments:
          remove_columns: all
          batched: true
          fn_kwargs:
            text_column_name: "output"
            truncation: True
            max_length: 1024
      - name: duplicate_columns
        arguments:
          remove_columns: all
          batched: true
          fn_kwargs:
            old_column_name: "input_ids"
            new_column_name: "labels"
""",
        {},
    ),
    "skip_large_columns_data_handler_template": (
        """\
dataprocessor:
  type: default
datasets:
  - name: non_tokenized
    data_paths: ['$text']
    data_handlers:
      - name: tokenize
        arguments:
          remove_columns: all
          batched: true
          fn_kwargs:
            text_column_name: "output"
      - name: duplicate_columns
        arguments:
          remove_columns: all
          batched: true
          fn_kwargs:
            existing_column_name: "input_ids"
            new_column_name: "labels"
      - name: skip_samples_with_large_columns
        arguments:
          batched: true
          fn_kwargs:
            column_name: "input_ids"
            max_allowed_length: 50
""",
        {},
    ),
    "duplicate_columns": (
        """\
dataprocessor:
  type: default
datasets:
  - name: pre_tokenized_with_only_input_ids
    data_paths: ['$tokens']
    data_handlers:
      - name: duplicate_columns
        arguments:
          batched: false
          fn_kwargs:
            existing_column_name: "input_ids"
            new_column_name: "labels"
""",
        {},
    ),
    "rename_select_columns": (
        """\
dataprocessor:
  type: default
datasets:
  - name: text_dataset_input_output_masking
    data_paths: ['$io']
    data_handlers:
      - name: rename_columns
        arguments:
          fn_kwargs:
            column_mapping:
              "input"  : "instruction"
              "output" : "response"
      - name: retain_columns
        arguments:
          fn_kwargs:
            column_names:
              - "instruction"
              - "response"
      - name: tokenize_and_apply_input_masking
        arguments:
          remove_columns: all
          batched: false
          fn_kwargs:
            input_column_name: instruction
            output_column_name: response
""",
        {},
    ),
    # --- older shapes fms shipped earlier (handler aliases, top-level chat_template,
    # dataset-level rename/retain); they run too
    "apply_custom_template_older_spelling": (
        "dataprocessor:\n  type: default\ndatasets:\n  - name: d\n    data_paths: ['$io']\n"
        "    data_handlers:\n      - name: apply_custom_data_formatting_template\n"
        "        arguments:\n          remove_columns: all\n          batched: false\n"
        "          fn_kwargs:\n            dataset_text_field: formatted_text\n"
        '            template: "### Input: {{input}} \\n\\n### Response: {{output}}"\n',
        JINJA_FLAGS,
    ),
    "apply_custom_jinja_template_streaming": (
        "dataprocessor:\n  type: default\n  streaming: true\ndatasets:\n  - name: d\n"
        "    data_paths: ['$io']\n    data_handlers:\n      - name: apply_custom_jinja_template\n"
        "        arguments:\n          remove_columns: all\n          batched: false\n"
        "          fn_kwargs:\n            formatted_text_column_name: formatted_text\n"
        '            template: "### Input: {{input}} \\n\\n### Response: {{output}}"\n',
        JINJA_FLAGS,
    ),
    "skip_large_text_older_names": (
        "dataprocessor:\n  type: default\ndatasets:\n  - name: d\n    data_paths: ['$text']\n"
        "    data_handlers:\n      - name: tokenize\n        arguments:\n"
        "          remove_columns: all\n          batched: true\n          fn_kwargs:\n"
        "            dataset_text_field: output\n      - name: duplicate_columns\n"
        "        arguments:\n          batched: true\n          fn_kwargs:\n"
        "            old_column: input_ids\n            new_column: labels\n"
        "      - name: skip_large_text\n        arguments:\n          fn_kwargs:\n"
        "            column_name: input_ids\n            max_length: 50\n",
        {},
    ),
    "multiple_datasets_with_sampling_and_a_top_level_template": (
        "chat_template: |\n"
        + textwrap.indent(FMS_TEST_TEMPLATE, "  ")
        + "dataprocessor:\n  type: default\n  sampling_stopping_strategy: first_exhausted\n"
        "  seed: 66\ndatasets:\n"
        + "".join(
            f"  - name: dataset_{i}\n    sampling: {share}\n    data_paths: ['$io']\n"
            + INPUT_MASKING
            for i, share in ((1, 0.3), (2, 0.4), (3, 0.3))
        ),
        {},
    ),
    "rename_retain_columns_at_dataset_level": (
        "dataprocessor:\n  type: default\ndatasets:\n  - name: d\n"
        "    rename_columns:\n      input: instruction\n      output: response\n"
        "    retain_columns: [instruction, response]\n    data_paths: ['$io']\n"
        "    data_handlers:\n      - name: tokenize_and_apply_input_masking\n"
        "        arguments:\n          remove_columns: all\n          batched: false\n"
        "          fn_kwargs:\n            input_field_name: instruction\n"
        "            output_field_name: response\n",
        {},
    ),
    "multi_turn_data_with_chat_template": (
        "dataprocessor:\n  type: default\n  chat_template: |\n"
        + textwrap.indent(FMS_TEST_TEMPLATE, "    ")
        + "datasets:\n"
        + "".join(
            f"  - name: dataset_{i}\n    data_paths: ['$chat']\n"
            "    data_handlers:\n      - name: apply_tokenizer_chat_template\n"
            "        arguments:\n          remove_columns: all\n          fn_kwargs:\n"
            '            dataset_text_field: "formatted_chat_data"\n'
            for i in (1, 2)
        ),
        CHAT_TEXT_FLAGS,
    ),
    "multi_turn_data_with_chat_template_granite_3_1B": (
        "dataprocessor:\n  type: default\n  chat_template: |\n"
        + textwrap.indent(GRANITE_TEMPLATE, "    ")
        + "datasets:\n  - name: dataset_1\n    data_paths: ['$chat']\n"
        "    data_handlers:\n      - name: apply_tokenizer_chat_template\n"
        "        arguments:\n          remove_columns: all\n          fn_kwargs:\n"
        '            formatted_text_column_name: "formatted_chat_data"\n'
        '            conversation_column_name: "messages"\n',
        GRANITE_FLAGS,
    ),
    "mt_data_granite_3_1B_tokenize_and_mask_handler": (
        "dataprocessor:\n  type: default\n  chat_template: |\n"
        + textwrap.indent(GRANITE_TEMPLATE, "    ")
        + "datasets:\n"
        + "".join(
            f"  - name: dataset_{i}\n    data_paths: ['$chat']\n" + CHAT_MASKING for i in (1, 2, 3)
        ),
        {},
    ),
    "granite_3_1b_valid_base64_data_handler": (
        "dataprocessor:\n  type: default\n  chat_template_base64: '$granite_b64'\n"
        "datasets:\n  - name: dataset_1\n    data_paths: ['$chat']\n" + CHAT_MASKING,
        {},
    ),
    "dataset_with_custom_split": (
        """\
dataprocessor:
    type: default
    sampling_stopping_strategy: first_exhausted
    seed: 66
datasets:
  - name: dataset_split_custom_split_name
    split:
      train: 0.8
      validation: 0.2
    sampling: 0.5
    dataset_split_name: "train_sft"
    data_paths: ['$sft']
    data_handlers:
      - name: tokenize_and_apply_chat_template_with_masking
        arguments:
          remove_columns: all
          batched: false
          fn_kwargs:
            formatted_text_column_name: "formatted_chat_data"
            conversation_column: "messages"
  - name: dataset_wo_split_custom_split_name
    sampling: 0.5
    dataset_split_name: "train_sft"
    data_paths: ['$sft']
    data_handlers:
      - name: tokenize_and_apply_chat_template_with_masking
        arguments:
          remove_columns: all
          batched: false
          fn_kwargs:
            formatted_text_column_name: "formatted_chat_data"
            conversation_column: "messages"
""",
        {},
    ),
    "pretokenized_data": (
        "datasets:\n  - name: pretokenized_dataset\n    data_paths: ['$pretok']\n",
        {},
    ),
    "pretokenized_json_data_streaming": (
        "dataprocessor:\n  type: default\n  streaming: true\n"
        "datasets:\n  - name: pretokenized_dataset\n    data_paths: ['$pretok']\n",
        {},
    ),
}


@pytest.fixture(scope="module")
def fms_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fms_data")
    tokens = [{"input_ids": [5, 6, 7 + i]} for i in range(6)]
    pretokenized = [{"input_ids": [5, 6, 7 + i], "labels": [X, 6, 7 + i]} for i in range(6)]
    DatasetDict({"train_sft": Dataset.from_list(chats(10))}).save_to_disk(str(root / "sft"))
    return {
        "io": str(write_jsonl(root / "io.jsonl", arithmetic(20))),
        "io2": str(write_jsonl(root / "io2.jsonl", arithmetic(10, start=40))),
        "text": str(write_jsonl(root / "text.jsonl", complaints(10))),
        "chat": str(write_jsonl(root / "chat.jsonl", chats(10))),
        "tokens": str(write_jsonl(root / "tokens.jsonl", tokens)),
        "pretok": str(write_jsonl(root / "pretok.jsonl", pretokenized)),
        "sft": str(root / "sft"),
        "granite_b64": base64.b64encode(GRANITE_TEMPLATE.encode()).decode(),
    }


@pytest.mark.parametrize("shape", list(FMS_SHAPES))
def test_fms_shipped_config_shape_runs(shape, fms_data, tmp_path, tiny_tokenizer):
    text, flags = FMS_SHAPES[shape]
    path = tmp_path / f"{shape}.yaml"
    path.write_text(string.Template(text).substitute(fms_data), encoding="utf-8")
    prepared = prepare_datasets(
        plan_data(DataArgs(data_config_path=str(path), **flags)),
        tiny_tokenizer,
        256,
        cache_dir=str(tmp_path / "cache"),
    )
    rows = [dict(r) for r in prepared.train.take(3)]
    assert rows
    for row in rows:
        assert set(row) == {"input_ids", "labels"}
        assert len(row["input_ids"]) == len(row["labels"])
        assert any(label != X for label in row["labels"])
    if "chat" in shape or "granite" in shape or "custom_split" in shape:
        # the chat rows' only assistant turn is "<i+1>."
        assert re.match(r"\d+\.", trained_text(tiny_tokenizer, rows[0]))


def test_fms_invalid_base64_chat_template_is_refused(prepare, config_file, fms_data):
    path = config_file(
        "dataprocessor:\n  type: default\n  chat_template_base64: 'dsaeyUtIGlmIG1lc3NhZ2Vz'\n"
        f"datasets:\n  - name: dataset_1\n    data_paths: ['{fms_data['chat']}']\n" + CHAT_MASKING
    )
    with pytest.raises(ConfigError, match="chat_template_base64"):
        prepare(data_config_path=path)


def test_fms_odm_config_is_refused(prepare, config_file, fms_data):
    path = config_file(
        "dataprocessor:\n  type: odm\n  sampling_stopping_strategy: first_exhausted\n  seed: 66\n"
        "  odm:\n    update_interval: 1\n    reward_type: validation_loss\n    gamma: 0.1\n"
        "datasets:\n  - name: d1\n    split: {train: 0.8, validation: 0.2}\n    sampling: 1.0\n"
        f"    data_paths: ['{fms_data['io']}']\n" + INPUT_MASKING
    )
    with pytest.raises(ConfigError, match="ODM"):
        prepare(data_config_path=path)


def test_templates_flags_on_already_tokenized_data_are_reported(
    prepare, tmp_path, config_file, caplog
):
    data = write_jsonl(tmp_path / "io.jsonl", arithmetic(4))
    path = config_file(
        f"""
        datasets:
          - name: io
            data_paths: ["{data}"]
            data_handlers:
              - name: tokenize_and_apply_input_masking
                arguments:
                  fn_kwargs: {{input_column_name: input, output_column_name: output}}
        """
    )
    with caplog.at_level(logging.WARNING):
        prepared = prepare(data_config_path=path, response_template="### Answer:")
    assert len(prepared.train) == 4
    assert "--response_template/--instruction_template do not apply" in caplog.text


def test_rows_removed_by_a_filter_handler_are_counted(
    prepare, config_file, tmp_path, tiny_tokenizer
):
    texts = ["short", "a much longer text " * 6, "tiny", "another long one " * 8]
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    path = config_file(
        f"""\
        datasets:
          - name: text
            data_paths: ['{data}']
            data_handlers:
              - name: tokenize
                arguments: {{remove_columns: all, fn_kwargs: {{text_column_name: text}}}}
              - name: skip_samples_with_large_columns
                arguments: {{fn_kwargs: {{column_name: input_ids, max_allowed_length: 10}}}}
        """
    )
    prepared = prepare(data_config_path=path)
    report = prepared.report.dataset("text")
    assert (report.rows, report.filtered_rows) == (2, 2)
    assert "filtered" in prepared.report.table().splitlines()[0]
