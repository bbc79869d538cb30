"""Tests for tuning/data/config/schema.py.

Why: fms-hf-tuning ignores unknown data-config keys and fails late with asserts; we must accept
every shape fms ships, resolve paths against the config file, and refuse mistakes up front with
one message that lists every problem, its key path, the value found and the fix.
"""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

import pytest

from tuning.data.config.load import load_data_config
from tuning.data.config.schema import (
    DataConfig,
    DatasetSpec,
    HandlerArguments,
    SplitSpec,
)
from tuning.errors import ConfigError
from tuning.tools.data_docs import dump_schema_markdown

TEMPLATE = (
    "{%- for message in messages %}\n"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>\\n' }}\n"
    "{%- endfor %}\n"
)
TEMPLATE_B64 = base64.b64encode(TEMPLATE.encode()).decode()

# fms's handler block, indented to sit under a dataset entry in the configs below
HANDLER = textwrap.indent(
    "data_handlers:\n"
    "  - name: tokenize_and_apply_input_masking\n"
    "    arguments:\n"
    "      remove_columns: all\n"
    "      batched: false\n"
    "      fn_kwargs:\n"
    "        input_column_name: input\n"
    "        output_column_name: output\n",
    " " * 12,
)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_data_config(path)
    return str(info.value)


# --- shapes fms ships -----------------------------------------------------------------------------


def test_fms_sampling_and_split_with_four_datasets(tmp_path: Path) -> None:
    """fms's multiple_datasets_with_sampling_and_split_2.yaml, paths filled in."""
    path = write(
        tmp_path,
        f"""\
        dataprocessor:
            type: default
            sampling_stopping_strategy: first_exhausted
            seed: 66
        datasets:
          - name: dataset_1
            split:
              train: 0.8
              validation: 0.2
            sampling: 0.6
            data_paths:
              - "d1.jsonl"
{HANDLER}
          - name: dataset_2
            split:
              train: 0.6
            sampling: 0.4
            data_paths:
              - "d2.jsonl"
{HANDLER}
          - name: dataset_3
            split:
              validation: 0.1
            data_paths:
              - "d3.jsonl"
          - name: dataset_4
            split:
              train: 0.0
              validation: 0.3
            data_paths:
              - "d4.jsonl"
        """,
    )
    config = load_data_config(path)
    assert config.source_path == path
    assert config.dataprocessor.seed == 66
    assert config.dataprocessor.sampling_stopping_strategy == "first_exhausted"
    assert [d.sampling for d in config.datasets] == [0.6, 0.4, None, None]
    assert config.datasets[1].split == SplitSpec(train=0.6, validation=0.0)
    assert config.datasets[2].split == SplitSpec(train=0.0, validation=0.1)
    assert [d.trains() for d in config.datasets] == [True, True, False, False]
    handler = config.datasets[0].data_handlers[0]
    assert handler.name == "tokenize_and_apply_input_masking"
    assert handler.arguments.remove_columns == "all"
    assert handler.arguments.fn_kwargs == {
        "input_column_name": "input",
        "output_column_name": "output",
    }
    assert config.datasets[0].data_paths == [str(tmp_path / "d1.jsonl")]


def test_odm_config_parses_here_and_is_refused_later(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        dataprocessor:
            type: odm
            odm:
              update_interval: 1
              reward_type: validation_loss
              gamma: 0.1
        datasets:
          - name: a
            sampling: 1
            data_paths: [a.jsonl]
        """,
    )
    config = load_data_config(path)
    assert config.dataprocessor.type == "odm"
    assert config.dataprocessor.odm == {
        "update_interval": 1,
        "reward_type": "validation_loss",
        "gamma": 0.1,
    }


def test_multiline_chat_template_is_kept_verbatim(tmp_path: Path) -> None:
    indented = textwrap.indent(TEMPLATE, " " * 12)
    path = write(
        tmp_path,
        f"""\
        dataprocessor:
          type: default
          chat_template: |
{indented}
        datasets:
          - name: chat
            data_paths: [chat.jsonl]
        """,
    )
    config = load_data_config(path)
    assert config.resolved_chat_template() == TEMPLATE


def test_valid_base64_chat_template_is_decoded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        dataprocessor:
          chat_template_base64: '{TEMPLATE_B64}'
        datasets:
          - name: chat
            data_paths: [chat.jsonl]
        """,
    )
    assert load_data_config(path).resolved_chat_template() == TEMPLATE


@pytest.mark.parametrize(
    "value",
    [
        "dsa" + TEMPLATE_B64,  # fms's granite_3_1b_invalid_base64 config: three stray characters
        "not base64 at all!",
        base64.b64encode(b"\xff\xfe\x00bad utf-8").decode(),
    ],
)
def test_invalid_base64_chat_template_is_refused(tmp_path: Path, value: str) -> None:
    path = write(
        tmp_path,
        f"""\
        dataprocessor:
          chat_template_base64: '{value}'
        datasets:
          - name: chat
            data_paths: [chat.jsonl]
        """,
    )
    message = config_error(path)
    assert "`dataprocessor.chat_template_base64`: does not decode as base64 of UTF-8" in message
    assert "chat_template_path instead" in message


def test_chat_template_path_is_relative_to_the_config(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "configs" / "templates").mkdir(parents=True)
    (tmp_path / "configs" / "templates" / "t.jinja").write_text(TEMPLATE, encoding="utf-8")
    write(
        tmp_path,
        """\
        dataprocessor:
          chat_template_path: templates/t.jinja
        datasets:
          - name: chat
            data_paths: [chat.jsonl]
        """,
        name="configs/data.yaml",
    )
    monkeypatch.chdir(tmp_path)
    config = load_data_config("configs/data.yaml")
    assert config.dataprocessor.chat_template_path == str(tmp_path / "configs/templates/t.jinja")
    assert config.resolved_chat_template() == TEMPLATE


def test_unreadable_chat_template_path_is_a_config_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        dataprocessor:
          chat_template_path: missing.jinja
        datasets:
          - name: chat
            data_paths: [chat.jsonl]
        """,
    )
    config = load_data_config(path)
    with pytest.raises(ConfigError, match=r"dataprocessor\.chat_template_path in .*missing\.jinja"):
        config.resolved_chat_template()


def test_two_chat_templates_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        dataprocessor:
          chat_template: "{{{{ messages }}}}"
          chat_template_base64: '{TEMPLATE_B64}'
        datasets:
          - name: chat
            data_paths: [chat.jsonl]
        """,
    )
    assert "chat_template and chat_template_base64 are both set; keep one" in config_error(path)


def test_top_level_chat_template_is_the_older_shape_of_dataprocessor_chat_template(
    tmp_path: Path, caplog
) -> None:
    path = write(
        tmp_path,
        """\
        chat_template: "{{ messages }}"
        dataprocessor:
          type: default
        datasets:
          - name: chat
            data_paths: [chat.jsonl]
        """,
    )
    assert load_data_config(path).resolved_chat_template() == "{{ messages }}"
    both = write(
        tmp_path,
        """\
        chat_template: "{{ messages }}"
        dataprocessor:
          chat_template_path: t.jinja
        datasets:
          - name: chat
            data_paths: [chat.jsonl]
        """,
        "both.yaml",
    )
    assert "`chat_template` at the top level and `dataprocessor.chat_template_path` both" in (
        config_error(both)
    )


def test_dataset_level_rename_and_retain_run_first_with_their_own_key_paths(tmp_path) -> None:
    from tuning.data.handlers.binding import bind_dataset_chain

    spec = DatasetSpec(
        name="d",
        data_paths=["x.jsonl"],
        rename_columns={"input": "instruction"},
        retain_columns=["instruction", "output"],
        data_handlers=[
            {"name": "remove_columns", "arguments": {"fn_kwargs": {"column_names": "output"}}}
        ],
    )
    chain, problems = bind_dataset_chain(2, spec)
    assert problems == []
    assert [(b.info.name, b.where) for b in chain] == [
        ("rename_columns", "datasets[2].rename_columns"),
        ("select_columns", "datasets[2].retain_columns"),
        ("remove_columns", "datasets[2].data_handlers[0]"),
    ]
    assert chain[0].args.column_mapping == {"input": "instruction"}
    assert chain[1].args.column_names == ["instruction", "output"]


def test_dataset_split_name_remove_columns_and_num_proc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        datasets:
          - name: saved
            dataset_split_name: train_sft
            shuffle: true
            builder: parquet
            data_paths: saved_dict
            data_handlers:
              - name: tokenize
                arguments:
                  batched: true
                  batch_size: 16
                  num_proc: 4
                  remove_columns: text
                  fn_kwargs: {text_column_name: text, max_length: 128}
              - name: duplicate_columns
        """,
    )
    dataset = load_data_config(path).datasets[0]
    assert dataset.dataset_split_name == "train_sft"
    assert dataset.shuffle is True
    assert dataset.builder == "parquet"
    assert dataset.data_paths == [str(tmp_path / "saved_dict")]
    first, second = dataset.data_handlers
    assert first.arguments == HandlerArguments(
        batched=True,
        batch_size=16,
        num_proc=4,
        remove_columns=["text"],
        fn_kwargs={"text_column_name": "text", "max_length": 128},
    )
    assert second.arguments == HandlerArguments()


def test_defaults_and_our_audit_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        dataprocessor:
          audit_sample_size: 8
          max_zero_label_fraction: 0.05
        datasets:
          - name: a
            data_paths: [a.jsonl]
        """,
    )
    config = load_data_config(path)
    processor = config.dataprocessor
    assert (processor.type, processor.streaming, processor.seed) == ("default", False, 42)
    assert processor.sampling_stopping_strategy == "all_exhausted"
    assert (processor.audit_sample_size, processor.max_zero_label_fraction) == (8, 0.05)
    assert config.resolved_chat_template() is None
    assert config.datasets[0].shuffle is None and not config.datasets[0].shuffled()


def test_json_config_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"datasets": [{"name": "a", "data_paths": ["a.jsonl"], "split": {"train": 1}}]}),
        encoding="utf-8",
    )
    config = load_data_config(path)
    assert config.datasets[0].split == SplitSpec(train=1.0, validation=0.0)


# --- path resolution ------------------------------------------------------------------------------


def test_paths_resolve_against_the_config_folder_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    absolute = str(tmp_path / "abs" / "data.jsonl")
    path = write(
        tmp_path,
        f"""\
        datasets:
          - name: a
            data_paths:
              - data/train.jsonl
              - ../shared/*.jsonl
              - {absolute}
              - ~/home.jsonl
        """,
        name="configs/data.yaml",
    )
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    relative_to_cwd = Path("..") / path.relative_to(tmp_path)
    config = load_data_config(relative_to_cwd)
    assert config.datasets[0].data_paths == [
        str(tmp_path / "configs" / "data" / "train.jsonl"),
        str(tmp_path / "shared" / "*.jsonl"),
        absolute,
        str(tmp_path / "home" / "home.jsonl"),
    ]
    assert config.source_path == path


def test_single_path_string_becomes_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "datasets:\n  - name: a\n    data_paths: a.jsonl\n")
    assert load_data_config(path).datasets[0].data_paths == [str(tmp_path / "a.jsonl")]


# --- sampling and split ---------------------------------------------------------------------------


def _sampling_config(tmp_path: Path, *shares: float) -> Path:
    entries = "".join(
        f"  - name: d{i}\n    sampling: {share}\n    data_paths: [d{i}.jsonl]\n"
        for i, share in enumerate(shares)
    )
    return write(tmp_path, "datasets:\n" + entries)


def test_sampling_summing_to_0_9_is_refused(tmp_path: Path) -> None:
    message = config_error(_sampling_config(tmp_path, 0.5, 0.4))
    assert "`datasets`: sampling shares must sum to 1, but 0.5 + 0.4 = 0.9; adjust them" in message


@pytest.mark.parametrize("shares", [(0.1, 0.2, 0.7), (0.7, 0.2, 0.1)])
def test_sampling_0_1_plus_0_2_plus_0_7_is_accepted(tmp_path: Path, shares: tuple) -> None:
    # in this order the float sum is 0.9999999999999999, which fms (exact ==) refuses
    assert sum((0.7, 0.2, 0.1)) != 1.0
    config = load_data_config(_sampling_config(tmp_path, *shares))
    assert [d.sampling for d in config.datasets] == list(shares)


def test_sampling_must_be_given_for_every_training_dataset(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        datasets:
          - name: a
            sampling: 1.0
            data_paths: [a.jsonl]
          - name: b
            data_paths: [b.jsonl]
        """,
    )
    assert "`datasets[1].sampling`: is missing while other datasets set sampling" in config_error(
        path
    )


def test_sampling_out_of_range_and_split_over_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        datasets:
          - name: a
            sampling: 1.5
            split: {train: 0.9, validation: 0.2}
            data_paths: [a.jsonl]
        """,
    )
    message = config_error(path)
    assert "`datasets[0].sampling`: Input should be less than or equal to 1 (found 1.5)" in message
    assert "`datasets[0].split`: train + validation is 1.1, more than 1" in message


def test_split_that_gives_no_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="both 0"):
        SplitSpec(train=0, validation=0)


def test_duplicate_dataset_names_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        datasets:
          - name: same
            data_paths: [a.jsonl]
          - name: same
            data_paths: [b.jsonl]
        """,
    )
    assert "`datasets[1].name`: repeats the name of datasets[0]" in config_error(path)


# --- strictness and error reporting ---------------------------------------------------------------


def test_datapreprocessor_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        datapreprocessor:
          type: default
        datasets:
          - name: a
            data_paths: [a.jsonl]
        """,
    )
    with pytest.raises(
        ConfigError, match=r"`datapreprocessor`: unknown key .*Did you mean 'dataprocessor'\?"
    ):
        load_data_config(path)


def test_unknown_key_inside_handler_arguments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        datasets:
          - name: a
            data_paths: [a.jsonl]
          - name: b
            data_paths: [b.jsonl]
            data_handlers:
              - name: tokenize
                arguments:
                  fn_kwarg: {text_column_name: text}
                  input_column_name: text
        """,
    )
    message = config_error(path)
    assert (
        "`datasets[1].data_handlers[0].arguments.fn_kwarg`: unknown key "
        "(value {'text_column_name': 'text'}). Did you mean 'fn_kwargs'?"
    ) in message
    assert (
        "`datasets[1].data_handlers[0].arguments.input_column_name`: unknown key (value 'text'). "
        "Handler-specific arguments go under fn_kwargs."
    ) in message


def test_every_problem_is_reported_in_one_paragraph(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        datapreprocessor: {}
        dataprocessor:
          seed: abc
          sampling_stopping_strategy: never
        datasets:
          - name: a
            data_paths: []
            builder: jsn
            data_handlers:
              - arguments: {remove_columns: 5, num_proc: 0}
          - data_paths: [b.jsonl]
            shufle: true
        """,
    )
    message = config_error(path)
    assert message.startswith(f"Data config {path} has 10 problems: (1) ")
    assert "\n" not in message
    for expected in [
        "`dataprocessor.seed`: Input should be a valid integer",
        "(found 'abc')",
        "`dataprocessor.sampling_stopping_strategy`: Input should be 'all_exhausted' or "
        "'first_exhausted' (found 'never')",
        "`datasets[0].data_paths`: List should have at least 1 item",
        "`datasets[0].builder`: unknown builder. Did you mean 'json'?",
        "`datasets[0].data_handlers[0].name`: is required but missing; add it.",
        "`datasets[0].data_handlers[0].arguments.remove_columns`: must be a list of column "
        'names, one column name, or "all" (found 5)',
        "`datasets[0].data_handlers[0].arguments.num_proc`: Input should be greater than or "
        "equal to 1 (found 0)",
        "`datasets[1].name`: is required but missing",
        "`datasets[1].shufle`: unknown key (value True). Did you mean 'shuffle'?",
        "`datapreprocessor`: unknown key ({}",
    ]:
        assert expected.replace("({}", "(value {}") in message, expected


def test_source_path_cannot_be_set_by_the_user(tmp_path: Path) -> None:
    path = write(tmp_path, "source_path: /etc\ndatasets:\n  - name: a\n    data_paths: [a]\n")
    assert "`source_path`: unknown key; it is set by tuneforge" in config_error(path)


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        datasets:
          - name: a
            data_paths: [a.jsonl]
           builder: json
        """,
    )
    with pytest.raises(ConfigError, match=r"is not valid YAML at line 4, column 4"):
        load_data_config(path)


def test_json_syntax_error_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"datasets": [\n  {"name": "a",}\n]}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"is not valid JSON: .* at line 2"):
        load_data_config(path)


def test_missing_empty_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_data_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"is empty|has no settings"):
        load_data_config(write(tmp_path, "# just a comment\n", name="empty.yaml"))
    with pytest.raises(ConfigError, match=r"must be a mapping .* but it is a list"):
        load_data_config(write(tmp_path, "- a\n- b\n", name="list.yaml"))
    with pytest.raises(ConfigError, match=r"`datasets`: is required but missing"):
        load_data_config(write(tmp_path, "dataprocessor: {}\n", name="nodata.yaml"))


def test_models_are_usable_without_the_loader() -> None:
    config = DataConfig(datasets=[DatasetSpec(name="a", data_paths="x.jsonl")])
    assert config.datasets[0].data_paths == ["x.jsonl"]
    assert config.source_path is None
    assert "source_path" not in config.model_dump()


# --- generated docs -------------------------------------------------------------------------------


def test_schema_markdown_is_deterministic_and_describes_every_key() -> None:
    text = dump_schema_markdown()
    assert text == dump_schema_markdown()
    for model in (DataConfig, DatasetSpec, SplitSpec, HandlerArguments):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            if name != "source_path":
                assert f"| `{name}` |" in text
    assert "source_path" not in text
    assert '| `sampling_stopping_strategy` | "all_exhausted" \\| "first_exhausted" |' in text
    assert '| `remove_columns` | list[str] \\| "all" \\| null | `null` |' in text


def test_a_config_that_trains_on_nothing_is_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"input": "a", "output": "b"}\n')
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "datasets:\n  - name: only_eval\n    data_paths: [a.jsonl]\n"
        "    split: {train: 0.0, validation: 1.0}\n"
    )
    with pytest.raises(ConfigError, match=r"`datasets`: no dataset gives training rows"):
        load_data_config(path)
