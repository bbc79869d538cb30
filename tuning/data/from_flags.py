"""Data without a data config: turn fms's flags into an equivalent in-memory data config.

fms picks how to process `--training_data_path` from the flags and the data's columns. We pick
the same way (plus chat `messages` rows, which fms does not take without a data config) and
express the choice as a DataConfig, so one code path runs every job. Mode selection reads only
the first rows (no `datasets`), so planning can use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuning.config.schema import DataArgs
from tuning.data.config.schema import (
    DataConfig,
    DataProcessorSpec,
    DatasetSpec,
    HandlerArguments,
    HandlerSpec,
    SplitSpec,
)
from tuning.data.sources import detect_builder, peek_rows, resolve_data_paths
from tuning.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TRAIN_NAME = "training_data"
EVAL_NAME = "validation_data"
FORMATTED_COLUMN = "text"  # where data_formatter_template / the chat template write (as fms)
DEFAULT_CONVERSATION = "messages"

PRETOKENIZED = "pretokenized"
TEXT = "dataset_text_field"
FORMATTER = "data_formatter_template"
CHAT = "chat"
CHAT_TEXT = "chat_with_response_template"
INPUT_OUTPUT = "input_output"


def flag_problems(data_args: DataArgs) -> list[str]:
    """Flag combinations that cannot work, whatever the data holds."""
    problems = []
    if data_args.data_config_path and (
        data_args.training_data_path or data_args.validation_data_path
    ):
        given = "--training_data_path" if data_args.training_data_path else "--validation_data_path"
        problems.append(
            f"--data_config_path and {given} are both set; with a data config, put the data "
            "paths in its datasets[].data_paths and drop the flag."
        )
    if not data_args.data_config_path and not data_args.training_data_path:
        problems.append("no training data: set --training_data_path or --data_config_path.")
    if data_args.instruction_template and not data_args.response_template:
        problems.append(
            "--instruction_template needs --response_template (the spans from each response "
            "template to the next instruction template are trained); set it or drop "
            "--instruction_template."
        )
    if data_args.data_config_path:
        return problems
    if data_args.data_formatter_template and data_args.dataset_text_field:
        problems.append(
            "--data_formatter_template and --dataset_text_field are both set, but they are "
            "alternatives (render a template, or read a text column); keep one."
        )
    if data_args.data_formatter_template and not data_args.response_template:
        problems.append(
            "--data_formatter_template needs --response_template, which marks where the trained "
            "response starts in the rendered text (e.g. --response_template '\\n### Response:')."
        )
    return problems


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in value
    )


def pick_mode(data_args: DataArgs, rows: list[dict[str, Any]], where: str) -> str:
    """The legacy mode for these first rows, exactly in fms's order (chat rows added)."""
    columns = list(rows[0]) if rows else []
    if "input_ids" in columns and "labels" in columns:
        flags = [
            f"--{name}"
            for name in (
                "response_template",
                "data_formatter_template",
                "dataset_text_field",
                "instruction_template",
            )
            if getattr(data_args, name)
        ]
        if flags:
            raise ConfigError(
                f"{where} is pretokenized (input_ids and labels), so {', '.join(flags)} cannot "
                "apply; drop them."
            )
        return PRETOKENIZED
    if data_args.data_formatter_template:
        return FORMATTER
    if data_args.dataset_text_field:
        if data_args.dataset_text_field not in columns:
            raise DataError(
                f"--dataset_text_field '{data_args.dataset_text_field}' is not a column of "
                f"{where} (columns: {', '.join(columns)}). Fix the flag."
            )
        return TEXT
    conversation = data_args.dataset_conversation_field or DEFAULT_CONVERSATION
    if conversation in columns:
        if not all(_is_conversation(row.get(conversation)) for row in rows):
            raise DataError(
                f"column '{conversation}' of {where} is not a list of {{role, content}} "
                "messages in every one of the first rows. Fix the data."
            )
        return CHAT_TEXT if data_args.response_template else CHAT
    if data_args.dataset_conversation_field:
        raise DataError(
            f"--dataset_conversation_field '{conversation}' is not a column of {where} "
            f"(columns: {', '.join(columns)}). Fix the flag."
        )
    if "input" in columns and "output" in columns:
        if data_args.response_template:
            logger.warning(
                "--response_template is not used for input/output rows: the output column is "
                "trained. Use --dataset_text_field with a text column to mask by template."
            )
        return INPUT_OUTPUT
    raise DataError(
        f"cannot tell how to train on {where}: its columns are {', '.join(columns) or '(none)'}. "
        "Give input_ids+labels (pretokenized), --dataset_text_field with a text column, "
        "--data_formatter_template, a 'messages' column of chat turns, or 'input' and 'output' "
        "columns; or write a data config (--data_config_path)."
    )


def _handler(name: str, **fn_kwargs: Any) -> HandlerSpec:
    return HandlerSpec(
        name=name, arguments=HandlerArguments(fn_kwargs=fn_kwargs, remove_columns="all")
    )


def _completion(data_args: DataArgs, column: str) -> HandlerSpec:
    return _handler(
        "tokenize_with_completion_mask",
        text_column_name=column,
        response_template=data_args.response_template,
        instruction_template=data_args.instruction_template,
        add_eos_token=True,
    )


def handlers_for(mode: str, data_args: DataArgs) -> list[HandlerSpec]:
    """The handler chain that implements a legacy mode."""
    conversation = data_args.dataset_conversation_field or DEFAULT_CONVERSATION
    if mode == PRETOKENIZED:
        return []
    if mode == TEXT:
        return [_completion(data_args, data_args.dataset_text_field or "")]
    if mode == FORMATTER:
        return [
            _handler(
                "apply_custom_jinja_template",
                formatted_text_column_name=FORMATTED_COLUMN,
                template=data_args.data_formatter_template,
            ),
            _completion(data_args, FORMATTED_COLUMN),
        ]
    if mode == CHAT:
        return [
            _handler(
                "tokenize_and_apply_chat_template_with_masking", conversation_column=conversation
            )
        ]
    if mode == CHAT_TEXT:
        return [
            _handler(
                "apply_tokenizer_chat_template",
                formatted_text_column_name=FORMATTED_COLUMN,
                conversation_column_name=conversation,
            ),
            _completion(data_args, FORMATTED_COLUMN),
        ]
    return [
        _handler(
            "tokenize_and_apply_input_masking",
            input_column_name="input",
            output_column_name="output",
            add_eos_token=True,
        )
    ]


def first_rows(path: str, field: str, n: int = 5) -> list[dict[str, Any]]:
    """The first rows behind a data-path flag (files, folders, globs)."""
    paths = resolve_data_paths([path], base_dir=Path.cwd(), field=field)
    return peek_rows(paths, detect_builder(paths, None), n)


def data_config_for(mode: str, data_args: DataArgs, seed: int = 42) -> DataConfig:
    """The in-memory data config equivalent to the flags, for the mode picked from the rows."""
    handlers = handlers_for(mode, data_args)
    datasets = [
        DatasetSpec(
            name=TRAIN_NAME,
            data_paths=[data_args.training_data_path or ""],
            split=SplitSpec(train=1.0, validation=0.0),
            data_handlers=handlers,
        )
    ]
    if data_args.validation_data_path:
        datasets.append(
            DatasetSpec(
                name=EVAL_NAME,
                data_paths=[data_args.validation_data_path],
                split=SplitSpec(train=0.0, validation=1.0),
                data_handlers=handlers,
            )
        )
    return DataConfig(
        dataprocessor=DataProcessorSpec(
            seed=seed, max_zero_label_fraction=data_args.zero_label_tolerance
        ),
        datasets=datasets,
    )
