"""Text handlers: render rows into one training text (custom jinja or the chat template).

Custom templates run in jinja's sandbox with StrictUndefined, so a template that names a column
the data lacks stops with that column's name instead of rendering an empty string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import AliasChoices, Field, field_validator

from tuning.data.handlers.registry import HandlerArgs, HandlerContext, register_handler
from tuning.errors import ConfigError, DataError, did_you_mean

_UNDEFINED = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


@lru_cache(maxsize=64)
def compile_template(template: str) -> Any:
    """Compile a custom template in the sandbox; a syntax error is a ConfigError."""
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import SandboxedEnvironment

    try:
        return SandboxedEnvironment(undefined=StrictUndefined).from_string(template)
    except TemplateSyntaxError as exc:
        raise ConfigError(
            f"the jinja template {_short(template)} has a syntax error at line {exc.lineno}: "
            f"{exc.message}."
        ) from None


def _short(text: str, limit: int = 80) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def render_custom(
    template: str, row: Mapping[str, Any], special: Mapping[str, str], dataset: str
) -> str:
    """Render one row: its columns, the tokenizer's special tokens and `element` (the row)."""
    from jinja2 import UndefinedError
    from jinja2.sandbox import SecurityError

    compiled = compile_template(template)
    try:
        return compiled.render({**special, **row, "element": dict(row)})
    except UndefinedError as exc:
        match = _UNDEFINED.search(str(exc))
        key = next((g for g in match.groups() if g), "?") if match else "?"
        raise DataError(
            f"dataset '{dataset}': the template {_short(template)} uses '{key}', which the row "
            f"does not have.{did_you_mean(key, row)} Columns: {', '.join(row)}. Fix the template "
            "or the data."
        ) from None
    except SecurityError as exc:
        raise ConfigError(
            f"dataset '{dataset}': the template {_short(template)} tried an unsafe operation "
            f"({exc}); templates run sandboxed."
        ) from None


def rows_of(batch: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """A batch (dict of lists) as a list of rows."""
    columns = list(batch)
    count = len(batch[columns[0]]) if columns else 0
    return [{column: batch[column][i] for column in columns} for i in range(count)]


def rows_of_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A list of rows as a batch (dict of lists)."""
    columns = list(rows[0]) if rows else []
    return {column: [row.get(column) for row in rows] for column in columns}


class JinjaTemplateArgs(HandlerArgs):
    formatted_text_column_name: str = Field(
        validation_alias=AliasChoices("formatted_text_column_name", "dataset_text_field"),
        description="Column the rendered text is written to.",
    )
    template: str = Field(
        description="Jinja template; columns are variables ({{input}}), as are the special "
        "tokens ({{eos_token}}) and `element` (the whole row)."
    )
    add_eos_token: bool = Field(False, description="Append the tokenizer's EOS token.")

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile_template(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    def writes(self) -> list[str]:
        return [self.formatted_text_column_name]


@register_handler(
    "apply_custom_jinja_template",
    arguments=JinjaTemplateArgs,
    batched_support=True,
    aliases=(
        "apply_custom_data_formatting_jinja_template",
        "apply_custom_data_formatting_template",
    ),
)
def apply_custom_jinja_template(
    batch: dict[str, list[Any]], args: JinjaTemplateArgs, ctx: HandlerContext
) -> dict[str, list[str]]:
    """Render each row with a jinja template into one text column (sandboxed, StrictUndefined)."""
    eos = ctx.special_tokens.get("eos_token", "") if args.add_eos_token else ""
    texts = [
        render_custom(args.template, row, ctx.special_tokens, ctx.dataset_name) + eos
        for row in rows_of(batch)
    ]
    return {args.formatted_text_column_name: texts}


def require_chat_template(ctx: HandlerContext) -> str:
    if not ctx.chat_template:
        raise ConfigError(
            f"dataset '{ctx.dataset_name}' needs a chat template, but the tokenizer has none and "
            "none was given. Set --chat_template, or chat_template in the data config's "
            "dataprocessor section."
        )
    return ctx.chat_template


def template_extras(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's `tools` and `documents`, which chat templates may render."""
    return {key: row[key] for key in ("tools", "documents") if row.get(key) is not None}


def check_messages(messages: Any, ctx: HandlerContext, column: str) -> list[dict[str, Any]]:
    """A conversation must be a list of {role, content} mappings."""
    problem = None
    if not isinstance(messages, list) or not messages:
        problem = f"is {type(messages).__name__ if messages else 'empty'}, not a list of messages"
    else:
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                problem = f"item {index} is not a mapping with a string 'role'"
                break
            if "content" not in message:
                problem = f"item {index} (role {message['role']!r}) has no 'content'"
                break
    if problem:
        raise DataError(
            f"dataset '{ctx.dataset_name}': column '{column}' of a row {problem}. Each "
            'conversation must be a list of {"role": ..., "content": ...} objects.'
        )
    return [message if type(message) is dict else dict(message) for message in messages]


def _render_whole_row(template: str, row: Mapping[str, Any], special: Mapping[str, str]) -> str:
    """fms passes the whole row as `messages` when no conversation column is named."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(template).render(
        messages=dict(row), add_generation_prompt=False, **special, **template_extras(row)
    )


class ChatTemplateArgs(HandlerArgs):
    formatted_text_column_name: str = Field(
        validation_alias=AliasChoices("formatted_text_column_name", "dataset_text_field"),
        description="Column the rendered conversation is written to.",
    )
    conversation_column_name: str | None = Field(
        None,
        validation_alias=AliasChoices("conversation_column_name", "conversation_column"),
        description="Column holding the messages; unset passes the whole row as `messages`.",
    )

    def reads(self) -> list[str]:
        return [self.conversation_column_name] if self.conversation_column_name else []

    def writes(self) -> list[str]:
        return [self.formatted_text_column_name]


@register_handler("apply_tokenizer_chat_template", arguments=ChatTemplateArgs, batched_support=True)
def apply_tokenizer_chat_template(
    batch: dict[str, list[Any]], args: ChatTemplateArgs, ctx: HandlerContext
) -> dict[str, list[str]]:
    """Render each conversation with the chat template into one text column (not tokenized).

    The template is the data config's, else --chat_template, else the tokenizer's.
    """
    from tuning.data.labels.chat import render

    template = require_chat_template(ctx)
    texts = []
    for row in rows_of(batch):
        try:
            if args.conversation_column_name is None:
                texts.append(_render_whole_row(template, row, ctx.special_tokens))
                continue
            column = args.conversation_column_name
            if column not in row:
                raise DataError(
                    f"dataset '{ctx.dataset_name}': no column '{column}'."
                    f"{did_you_mean(column, row)} Columns: {', '.join(row)}."
                )
            messages = check_messages(row[column], ctx, column)
            text, _ = render(template, messages, ctx.special_tokens, extra=template_extras(row))
        except (DataError, ConfigError):
            raise
        except Exception as exc:  # jinja raises many types; the template or the row is at fault
            raise DataError(
                f"dataset '{ctx.dataset_name}': the chat template failed on a row: "
                f"{type(exc).__name__}: {exc}. Check the template against the data."
            ) from exc
        texts.append(text)
    return {args.formatted_text_column_name: texts}
