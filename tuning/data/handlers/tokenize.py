"""Tokenizing handlers: rendered text + trained character spans -> input_ids and labels.

Each handler renders a batch of texts, marks the characters to train and hands the whole batch to
`masking.encode_with_spans`, where the fast tokenizer's offsets decide which tokens are trained.
Truncation keeps the response; the trimmed counts travel in temporary columns the pipeline reads
and drops.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field

from tuning.data.handlers.apply import arrow_output_allowed
from tuning.data.handlers.registry import (
    TRIMMED_PROMPT,
    TRIMMED_RESPONSE,
    HandlerArgs,
    HandlerContext,
    register_handler,
)
from tuning.data.handlers.text import (
    check_messages,
    require_chat_template,
    rows_of,
    template_extras,
)
from tuning.data.labels.base import Span, require_fast_tokenizer
from tuning.data.labels.masking import completion_spans, encode_with_spans
from tuning.errors import DataError, did_you_mean

TOKENIZED = ["input_ids", "labels", TRIMMED_PROMPT, TRIMMED_RESPONSE]


def _column(batch: dict[str, list[Any]], name: str, ctx: HandlerContext, handler: str) -> list:
    if name not in batch:
        raise DataError(
            f"dataset '{ctx.dataset_name}', handler {handler}: no column '{name}'."
            f"{did_you_mean(name, batch)} Columns at this step: {', '.join(batch)}."
        )
    values = batch[name]
    for value in values:
        if not isinstance(value, str):
            raise DataError(
                f"dataset '{ctx.dataset_name}', handler {handler}: column '{name}' holds "
                f"{type(value).__name__} ({value!r:.60}), not text. Fix the data or the "
                "column name."
            )
    return values


def encode(
    ctx: HandlerContext,
    texts: list[str],
    spans: list[list[Span]],
    max_length: int | None,
    *,
    prefix: str = "",
) -> dict[str, list[Any]]:
    """Tokenize a batch with its trained spans; `prefix` (e.g. the BOS text) is never trained."""
    require_fast_tokenizer(ctx.tokenizer)
    if prefix:
        texts = [prefix + text for text in texts]
        spans = [[(s + len(prefix), e + len(prefix)) for s, e in row] for row in spans]
    encoded = encode_with_spans(ctx.tokenizer, texts, spans, max_length)
    # Arrow arrays straight from the flat batch when the map can take them (see registry._call)
    columns = encoded.arrow_columns() if arrow_output_allowed() else encoded.columns()
    return {
        "input_ids": columns["input_ids"],
        "labels": columns["labels"],
        TRIMMED_PROMPT: columns["trimmed_prompt"],
        TRIMMED_RESPONSE: columns["trimmed_response"],
    }


def _eos(ctx: HandlerContext, wanted: bool) -> str:
    return ctx.special_tokens.get("eos_token", "") if wanted else ""


class TokenizeArgs(HandlerArgs):
    text_column_name: str = Field(
        validation_alias=AliasChoices("text_column_name", "dataset_text_field"),
        description="Column with the text to tokenize.",
    )
    truncation: bool | str = Field(
        True, description="Cut texts longer than max_length (from the right)."
    )
    max_length: int | None = Field(
        None, ge=1, description="Longest sequence; unset uses --max_seq_length."
    )

    def reads(self) -> list[str]:
        return [self.text_column_name]

    def writes(self) -> list[str]:
        return ["input_ids", TRIMMED_PROMPT, TRIMMED_RESPONSE]


@register_handler("tokenize", arguments=TokenizeArgs, batched_support=True)
def tokenize(
    batch: dict[str, list[Any]], args: TokenizeArgs, ctx: HandlerContext
) -> dict[str, list[Any]]:
    """Tokenize a text column into `input_ids` (the tokenizer adds its usual special tokens).

    No `labels` are written: follow with duplicate_columns (input_ids -> labels) to train on
    every token, as fms's configs do; a dataset that ends with input_ids alone trains on all.
    """
    texts = _column(batch, args.text_column_name, ctx, "tokenize")
    ids = ctx.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)[
        "input_ids"
    ]
    limit = args.max_length or ctx.max_seq_length
    cut = args.truncation not in (False, "do_not_truncate") and limit is not None
    trimmed = [max(len(row) - limit, 0) if cut else 0 for row in ids]
    return {
        "input_ids": [row[:limit] if cut else row for row in ids],
        TRIMMED_PROMPT: [0] * len(ids),
        TRIMMED_RESPONSE: trimmed,
    }


class InputMaskingArgs(HandlerArgs):
    input_column_name: str = Field(
        "input",
        validation_alias=AliasChoices("input_column_name", "input_field_name"),
        description="Column with the prompt (not trained).",
    )
    output_column_name: str = Field(
        "output",
        validation_alias=AliasChoices("output_column_name", "output_field_name"),
        description="Column with the response (trained).",
    )
    add_eos_token: bool = Field(True, description="Append the EOS token (trained) to the output.")

    def reads(self) -> list[str]:
        return [self.input_column_name, self.output_column_name]

    def writes(self) -> list[str]:
        return TOKENIZED


def join_input_output(prompt: str, response: str) -> str:
    """fms's joining rule: one space between them unless either side already has whitespace."""
    if prompt.endswith((" ", "\n", "\t")) or response.startswith((" ", "\n", "\t")):
        return prompt + response
    return prompt + " " + response


@register_handler(
    "tokenize_and_apply_input_masking", arguments=InputMaskingArgs, batched_support=True
)
def tokenize_and_apply_input_masking(
    batch: dict[str, list[Any]], args: InputMaskingArgs, ctx: HandlerContext
) -> dict[str, list[Any]]:
    """Train on the output only: text = input + output (+ EOS), labels cover output and EOS.

    As in fms, a space joins input and output when neither has whitespace at the join; the space
    belongs to the output.
    """
    name = "tokenize_and_apply_input_masking"
    prompts = _column(batch, args.input_column_name, ctx, name)
    responses = _column(batch, args.output_column_name, ctx, name)
    eos = _eos(ctx, args.add_eos_token)
    texts, spans = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        text = join_input_output(prompt, response) + eos
        texts.append(text)
        spans.append([(len(prompt), len(text))])
    return encode(ctx, texts, spans, ctx.max_seq_length, prefix=ctx.bos_text)


class CompletionMaskArgs(HandlerArgs):
    text_column_name: str = Field(
        validation_alias=AliasChoices("text_column_name", "dataset_text_field"),
        description="Column with the whole text (prompt and response).",
    )
    response_template: str | None = Field(
        None,
        description="Text that starts the response; only what follows it is trained. Unset "
        "trains the whole text.",
    )
    instruction_template: str | None = Field(
        None,
        description="Text that starts each user turn: every span from a response template to "
        "the next instruction template is trained (multi-turn).",
    )
    add_eos_token: bool = Field(
        True, description="Append the EOS token (trained) unless the text already ends with it."
    )

    def reads(self) -> list[str]:
        return [self.text_column_name]

    def writes(self) -> list[str]:
        return TOKENIZED


@register_handler(
    "tokenize_with_completion_mask", arguments=CompletionMaskArgs, batched_support=True
)
def tokenize_with_completion_mask(
    batch: dict[str, list[Any]], args: CompletionMaskArgs, ctx: HandlerContext
) -> dict[str, list[Any]]:
    """Completion-only loss: train what follows the response template (tuneforge's own).

    The template is found in the text by characters, so it works however the template's tokens
    merge with their neighbours. A row where the template never occurs trains nothing and is
    reported.
    """
    texts = []
    spans = []
    eos = _eos(ctx, args.add_eos_token)
    for text in _column(batch, args.text_column_name, ctx, "tokenize_with_completion_mask"):
        if eos and not text.endswith(eos):
            text += eos
        texts.append(text)
        if args.response_template is None:
            spans.append([(0, len(text))])
        else:
            spans.append(completion_spans(text, args.response_template, args.instruction_template))
    return encode(ctx, texts, spans, ctx.max_seq_length, prefix=ctx.bos_text)


class ChatMaskingArgs(HandlerArgs):
    conversation_column: str = Field(
        "messages",
        validation_alias=AliasChoices("conversation_column", "conversation_column_name"),
        description="Column holding the list of {role, content} messages.",
    )
    max_seq_length: int | None = Field(
        None, ge=1, description="Longest sequence; unset (or larger) uses --max_seq_length."
    )
    formatted_text_column_name: str | None = Field(
        None, description="Accepted because fms's configs pass it; not used."
    )

    def reads(self) -> list[str]:
        return [self.conversation_column]

    def writes(self) -> list[str]:
        return TOKENIZED


def chat_texts_and_spans(
    batch: dict[str, list[Any]], column: str, ctx: HandlerContext, *, method: str = "primary"
) -> tuple[list[str], list[list[Span]]]:
    """Render every conversation of a batch and find its assistant spans."""
    from tuning.data.labels.chat import assistant_spans, assistant_spans_batch, spans_by_prefix

    template = require_chat_template(ctx)
    find = assistant_spans if method == "primary" else spans_by_prefix
    conversations, extras = [], []
    for row in rows_of(batch):
        if column not in row:
            raise DataError(
                f"dataset '{ctx.dataset_name}': no conversation column '{column}'."
                f"{did_you_mean(column, row)} Columns: {', '.join(row)}. Set conversation_column."
            )
        conversations.append(check_messages(row[column], ctx, column))
        extras.append(template_extras(row))
    try:
        if method == "primary" and not any(extras):
            found = assistant_spans_batch(template, conversations, ctx.special_tokens)
        else:
            found = [
                find(template, messages, ctx.special_tokens, extra)
                for messages, extra in zip(conversations, extras, strict=True)
            ]
    except Exception as exc:  # jinja raises many types; the template or the row is at fault
        raise DataError(
            f"dataset '{ctx.dataset_name}': the chat template failed on a conversation: "
            f"{type(exc).__name__}: {exc}. Check the template against the data."
        ) from exc
    return [text for text, _ in found], [list(spans) for _, spans in found]


def chat_max_length(args: ChatMaskingArgs, ctx: HandlerContext) -> int | None:
    limits = [v for v in (args.max_seq_length, ctx.max_seq_length) if v is not None]
    return min(limits) if limits else None


@register_handler(
    "tokenize_and_apply_chat_template_with_masking",
    arguments=ChatMaskingArgs,
    batched_support=True,
)
def tokenize_and_apply_chat_template_with_masking(
    batch: dict[str, list[Any]], args: ChatMaskingArgs, ctx: HandlerContext
) -> dict[str, list[Any]]:
    """Render conversations with the chat template and train the assistant turns only.

    Every assistant turn is trained, including its end-of-turn text (e.g. `<|im_end|>`), so the
    model learns to stop. Templates with `{% generation %}` markers give the spans directly;
    others are located in one extra rendering. The template is the data config's, else
    --chat_template, else the tokenizer's.
    """
    texts, spans = chat_texts_and_spans(batch, args.conversation_column, ctx)
    return encode(ctx, texts, spans, chat_max_length(args, ctx))
