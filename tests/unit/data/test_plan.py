"""Tests for tuning/data/plan.py: every data problem, found before any model loads.

Why: a bad path, column, handler argument or template should fail in well under a second with
the flag or key path and the fix, not after minutes of model loading (or never, as in fms,
which trains on nothing when the response template is absent). Planning must not import torch,
transformers or datasets.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tuning.config.schema import DataArgs
from tuning.data.plan import build_data_plan, chat_template_problem
from tuning.problems import Problems

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted((REPO / "data_configs").glob("*.yaml"))


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "data_config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def problems(**flags) -> list[str]:
    found = Problems()
    plan = build_data_plan(DataArgs(**flags), 42, found)
    assert (plan is None) == bool(found), "a plan is made exactly when nothing is wrong"
    return found.items


def one(**flags) -> str:
    found = problems(**flags)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def io(tmp_path) -> str:
    return write_jsonl(tmp_path / "io.jsonl", [{"input": "Add 0 and 8.", "output": "8"}] * 3)


@pytest.fixture
def text(tmp_path) -> str:
    rows = [{"output": "### Input: hi\n\n### Response: complaint"}] * 3
    return write_jsonl(tmp_path / "text.jsonl", rows)


def test_planning_imports_no_torch_transformers_or_datasets(tmp_path, io):
    data_config = config(
        tmp_path,
        f"""\
        datasets:
          - name: a
            data_paths: ['{io}']
            data_handlers:
              - name: tokenize_and_apply_input_masking
                arguments: {{remove_columns: all}}
        """,
    )
    parquet = str(REPO / "data_configs" / "data" / "pretokenized.parquet")
    code = textwrap.dedent(
        f"""
        import sys
        from tuning.config.schema import DataArgs
        from tuning.data.plan import plan_data
        assert plan_data(DataArgs(data_config_path={data_config!r})).mode is None
        assert plan_data(DataArgs(training_data_path={io!r})).mode == "input_output"
        assert plan_data(DataArgs(training_data_path={parquet!r})).mode == "pretokenized"
        heavy = [m for m in ("torch", "transformers", "datasets") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shipped", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_pass(shipped):
    assert problems(data_config_path=str(shipped)) == []


def test_flag_only_modes_pass(io, text, tmp_path):
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]}],
    )
    assert problems(training_data_path=io, validation_data_path=io) == []
    assert problems(training_data_path=chat) == []
    assert (
        problems(
            training_data_path=text,
            dataset_text_field="output",
            response_template="\n### Response:",
        )
        == []
    )
    assert (
        problems(
            training_data_path=io,
            data_formatter_template="{{input}}\n### A: {{output}}",
            response_template="\n### A:",
        )
        == []
    )


# --- flags --------------------------------------------------------------------------------------


def test_data_config_with_training_data_path(io):
    message = one(data_config_path="x.yaml", training_data_path=io)
    assert "--data_config_path and --training_data_path are both set" in message


def test_no_data_at_all():
    assert "set --training_data_path or --data_config_path" in one()


def test_formatter_template_without_response_template(io):
    message = one(training_data_path=io, data_formatter_template="{{input}} {{output}}")
    assert "--data_formatter_template needs --response_template" in message


def test_formatter_template_with_text_field(io):
    found = problems(
        training_data_path=io,
        data_formatter_template="{{input}}",
        dataset_text_field="input",
        response_template="x",
    )
    assert any("are both set" in p for p in found)


def test_instruction_template_without_response_template(io):
    assert "--instruction_template needs --response_template" in one(
        training_data_path=io, instruction_template="<|user|>"
    )


def test_missing_file(tmp_path):
    message = one(training_data_path=str(tmp_path / "nope.jsonl"))
    assert "--training_data_path" in message and "does not exist" in message


def test_dataset_text_field_not_a_column(text):
    message = one(training_data_path=text, dataset_text_field="outptu")
    assert "--dataset_text_field 'outptu' is not a column" in message
    assert "columns: output" in message


def test_rows_without_a_known_shape(tmp_path):
    data = write_jsonl(tmp_path / "x.jsonl", [{"question": "a", "answer": "b"}])
    assert "cannot tell how to train" in one(training_data_path=data)


def test_messages_that_are_not_a_conversation(tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": ["hi", "there"]}])
    assert "not a list of {role, content} messages" in one(training_data_path=data)


def test_response_template_absent_from_the_text(text):
    message = one(
        training_data_path=text, dataset_text_field="output", response_template=" ### Response:"
    )
    assert "--response_template ' ### Response:' does not occur in 3 of the first 3" in message
    assert "leading whitespace/newline" in message


def test_formatter_template_with_unknown_column(io):
    message = one(
        training_data_path=io, data_formatter_template="{{ inptu }}", response_template="x"
    )
    assert "'inptu'" in message and "Did you mean 'input'?" in message


def test_chat_template_syntax(io):
    message = one(training_data_path=io, chat_template="{% for m in messages %}{{ m }")
    assert message.startswith("--chat_template: the chat template has a jinja syntax error")


def test_chat_templates_with_generation_tags_parse():
    template = (
        "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    )
    assert chat_template_problem(template, "x") is None


def test_validation_data_of_another_kind(io, tmp_path):
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]}],
    )
    message = one(training_data_path=io, validation_data_path=chat)
    assert "different kinds of rows (input_output vs chat)" in message


# --- data config --------------------------------------------------------------------------------


def test_every_data_config_problem_is_reported_at_once(tmp_path, io):
    path = config(
        tmp_path,
        f"""\
        datasets:
          - name: a
            data_paths: ['{io}']
            data_handlers:
              - name: tokenize_and_apply_input_maskin
          - name: b
            data_paths: ['{io}']
            data_handlers:
              - name: tokenize_and_apply_input_masking
                arguments:
                  fn_kwargs: {{output_colum_name: output}}
          - name: c
            data_paths: [missing.jsonl]
          - name: d
            data_paths: ['{io}']
            data_handlers:
              - name: rename_columns
                arguments:
                  fn_kwargs: {{column_mapping: {{input: instruction}}}}
              - name: tokenize_and_apply_input_masking
                arguments:
                  fn_kwargs: {{input_column_name: input}}
        """,
    )
    found = problems(data_config_path=path)
    assert len(found) == 4, found
    assert "Did you mean 'tokenize_and_apply_input_masking'?" in found[0]
    assert "`datasets[0].data_handlers[0].name`" in found[0]
    assert "`datasets[1].data_handlers[0].arguments.fn_kwargs.output_colum_name`" in found[1]
    assert "Did you mean 'output_column_name'?" in found[1]
    assert "`datasets[2]` (c)" in found[2] and "does not exist" in found[2]
    assert (
        "`datasets[3].data_handlers[1]` (tokenize_and_apply_input_masking) reads column "
        in (found[3])
    )
    assert "'input'" in found[3] and "Columns there: instruction, output" in found[3]


def test_data_config_messages_column_is_checked(tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": "hello"}])
    path = config(
        tmp_path,
        f"""\
        datasets:
          - name: chat
            data_paths: ['{data}']
            data_handlers:
              - name: tokenize_and_apply_chat_template_with_masking
        """,
    )
    assert "is not a list of {role, content} messages" in one(data_config_path=path)


def test_data_config_template_problems(tmp_path, io):
    path = config(
        tmp_path,
        f"""\
        dataprocessor:
          chat_template: "{{% for m in messages %}}"
        datasets:
          - name: a
            data_paths: ['{io}']
            data_handlers:
              - name: apply_custom_jinja_template
                arguments:
                  fn_kwargs: {{formatted_text_column_name: t, template: "{{{{ x"}}
          - name: b
            data_paths: ['{io}']
            data_handlers:
              - name: apply_custom_jinja_template
                arguments:
                  fn_kwargs: {{formatted_text_column_name: t, template: "{{{{ inptu }}}}"}}
        """,
    )
    found = problems(data_config_path=path)
    assert len(found) == 3, found
    assert "`dataprocessor` chat template" in found[0] and "syntax error" in found[0]
    assert "fn_kwargs.template`" in found[1] and "syntax error" in found[1]
    assert "'inptu'" in found[2] and "Did you mean 'input'?" in found[2]


def test_odm_streaming_split_and_bad_base64(tmp_path, io):
    path = config(
        tmp_path,
        f"""\
        dataprocessor: {{type: odm, streaming: true}}
        datasets:
          - name: a
            sampling: 1.0
            split: {{train: 0.8, validation: 0.2}}
            data_paths: ['{io}']
        """,
    )
    found = problems(data_config_path=path)
    assert any("ODM" in p for p in found)
    assert any("`datasets[0].split`" in p and "streaming" in p for p in found)

    bad = config(
        tmp_path,
        f"""\
        dataprocessor: {{chat_template_base64: 'dsaeyUtIGlmIG1lc3NhZ2Vz'}}
        datasets:
          - name: a
            data_paths: ['{io}']
        """,
    )
    assert "chat_template_base64" in one(data_config_path=bad)
    good = config(
        tmp_path,
        f"""\
        dataprocessor: {{chat_template_base64: '{base64.b64encode(b"{{ messages }}").decode()}'}}
        datasets:
          - name: a
            data_paths: ['{io}']
        """,
    )
    assert problems(data_config_path=good) == []


def test_dataset_level_rename_problem_names_its_own_key_path(tmp_path, io):
    data_config = config(
        tmp_path,
        f"""\
        datasets:
          - name: old_shape
            rename_columns: {{inptu: instruction, output: response}}
            data_paths: ['{io}']
            data_handlers:
              - name: tokenize_and_apply_input_masking
                arguments:
                  fn_kwargs: {{input_column_name: instruction, output_column_name: response}}
        """,
    )
    found = problems(data_config_path=data_config)
    assert found[0].startswith(
        "`datasets[0].rename_columns` (rename_columns) reads column 'inptu', which the data "
        "does not have at that step. Did you mean 'input'?"
    )
    assert any(p.startswith("`datasets[0].data_handlers[0]`") for p in found[1:])
