"""Chat masking: assistant turns only, every end-of-turn trained, whatever the template style.

Why: chat templates differ in headers, end-of-turn markers, whitespace handling and in what they
render around the last message; the loss mask must train exactly each assistant turn's content
plus its end-of-turn text (so the model learns to stop) in all of them. A template whose
rendering of a prefix differs from the start of the full conversation breaks the per-turn
prefix method fms uses; ours renders once, and the audit notices the difference.
"""

from __future__ import annotations

import pytest
from datasets import Dataset

from tuning.data.config.schema import HandlerArguments
from tuning.data.handlers import HandlerContext, apply_handler, bind_handler
from tuning.data.handlers.registry import TRIMMED_PROMPT
from tuning.data.labels.base import IGNORE_INDEX
from tuning.data.labels.chat import assistant_spans, spans_by_prefix, special_tokens_of
from tuning.data.report import audit_chat_masks
from tuning.errors import ConfigError, DataError

X = IGNORE_INDEX

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim)"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GENERATION = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ m['content'] + '<|end|>' }}{% endgeneration %}"
    "{{ '\\n' }}{% else %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Adds a system line only when the conversation ends with the assistant: a rendered prefix is
# then not the start of the full rendering.
REVIEW_WHEN_ANSWERED = (
    "{{ bos_token }}{% if messages[-1]['role'] == 'assistant' %}"
    "{{ '<|system|>\\nReview mode.<|end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Writes a closing line after the last message only (not in a generation prompt).
CLOSING_LINE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + "
    "'<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ 'Date: today\\n' }}"
    "{% endif %}"
)
UPPER = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + (m['content'] | upper)"
    " + '<|end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}"
    "{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 2+3?"},
    {"role": "assistant", "content": "5."},
]


def ctx_for(tokenizer, template: str | None, max_len: int | None = 256) -> HandlerContext:
    return HandlerContext(
        tokenizer=tokenizer,
        max_seq_length=max_len,
        dataset_name="chat",
        chat_template=template,
        special_tokens=special_tokens_of(tokenizer),
    )


def mask(tokenizer, template, conversations, max_len=256, **fn_kwargs):
    bound = bind_handler(
        "tokenize_and_apply_chat_template_with_masking",
        HandlerArguments(fn_kwargs=fn_kwargs, remove_columns="all"),
        "datasets[0].data_handlers[0]",
    )
    rows = [{"messages": c} for c in conversations]
    return apply_handler(Dataset.from_list(rows), bound, ctx_for(tokenizer, template, max_len))


def trained_runs(tokenizer, row) -> list[str]:
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        if label != X:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_tiny_template_exact_labels(tiny_tokenizer):
    tok = tiny_tokenizer
    pieces = [
        ("<s><|system|>\nYou are terse.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n", 0),
        ("4.<|end|>", 1),
        ("\n<|user|>\nAnd 2+3?<|end|>\n<|assistant|>\n", 0),
        ("5.<|end|>", 1),
        ("\n", 0),
    ]
    expected_ids, expected_labels = [], []
    for text, trained in pieces:
        piece = ids(tok, text)
        expected_ids += piece
        expected_labels += piece if trained else [X] * len(piece)
    row = mask(tok, tok.chat_template, [CONVERSATION])[0]
    # the pieces split at special tokens, so tokenizing them apart changes nothing
    assert row["input_ids"] == ids(tok, "".join(text for text, _ in pieces)) == expected_ids
    assert row["labels"] == expected_labels
    assert ids(tok, "4.<|end|>") == [27, 21, 7]


@pytest.mark.parametrize(
    ("template", "end"),
    [
        (None, "<|end|>"),  # the tokenizer's own template
        (LLAMA3, "<|eot_id|>"),
        (CHATML, "<|im_end|>"),
        (GENERATION, "<|end|>"),
        (REVIEW_WHEN_ANSWERED, "<|end|>"),
        (CLOSING_LINE, "<|end|>"),
        (UPPER, "<|end|>"),  # rewrites contents: the prefix method takes over
    ],
    ids=["tiny", "llama3", "chatml", "generation", "review_when_answered", "closing_line", "upper"],
)
def test_every_assistant_turn_and_its_end_of_turn_is_trained(tiny_tokenizer, template, end):
    tok = tiny_tokenizer
    row = mask(tok, template or tok.chat_template, [CONVERSATION])[0]
    assert trained_runs(tok, row) == ["4." + end, "5." + end]


def test_trimming_template_with_untrimmed_content(tiny_tokenizer):
    conversation = [
        {"role": "user", "content": "What is 2+2?\n"},
        {"role": "assistant", "content": " 4.\n"},
    ]
    row = mask(tiny_tokenizer, LLAMA3, [conversation])[0]
    assert trained_runs(tiny_tokenizer, row) == ["4.<|eot_id|>"]


def test_short_answer_is_not_found_inside_a_role_header(tiny_tokenizer):
    # "a" occurs in "<|assistant|>"; searching the rendered text for it trained the header.
    conversation = [
        {"role": "user", "content": "Pick a or b."},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "user"},
        {"role": "assistant", "content": "t"},
    ]
    row = mask(tiny_tokenizer, tiny_tokenizer.chat_template, [conversation])[0]
    assert trained_runs(tiny_tokenizer, row) == ["a<|end|>", "t<|end|>"]


def test_generation_markers_give_the_spans(tiny_tokenizer):
    text, spans = assistant_spans(GENERATION, CONVERSATION, special_tokens_of(tiny_tokenizer))
    assert [text[s:e] for s, e in spans] == ["4.<|end|>", "5.<|end|>"]


def test_prefix_method_fails_where_the_primary_does_not(tiny_tokenizer):
    special = special_tokens_of(tiny_tokenizer)
    text, spans = assistant_spans(REVIEW_WHEN_ANSWERED, CONVERSATION, special)
    assert text.startswith("<s><|system|>\nReview mode.<|end|>\n")
    assert [text[s:e] for s, e in spans] == ["4.<|end|>", "5.<|end|>"]
    _, prefix_spans = spans_by_prefix(REVIEW_WHEN_ANSWERED, CONVERSATION, special)
    assert prefix_spans != spans


def test_audit_agrees_on_well_behaved_templates_and_flags_the_others(tiny_tokenizer):
    rows = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    for template in (tiny_tokenizer.chat_template, LLAMA3, CHATML, GENERATION):
        result = audit_chat_masks(rows, "messages", ctx_for(tiny_tokenizer, template), 256)
        assert (result.rows_checked, result.rows_agreeing) == (2, 2)
        assert result.row_agreement_pct == 100.0
    for template in (REVIEW_WHEN_ANSWERED, CLOSING_LINE):
        result = audit_chat_masks(rows, "messages", ctx_for(tiny_tokenizer, template), 256)
        assert result.rows_checked == 2
        assert result.rows_agreeing < 2
        assert result.example_disagreement


def test_truncation_keeps_the_response_and_the_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    long = [
        {"role": "user", "content": "What is 2+2? " * 10},
        {"role": "assistant", "content": "4."},
    ]
    full = mask(tok, tok.chat_template, [long])[0]
    cut = mask(tok, tok.chat_template, [long], max_len=12)[0]
    assert len(cut["input_ids"]) == 12
    assert cut["input_ids"][0] == tok.bos_token_id == 1
    assert cut["input_ids"][1:] == full["input_ids"][-11:]  # the prompt lost tokens on the left
    assert trained_runs(tok, cut) == ["4.<|end|>"]
    assert cut[TRIMMED_PROMPT] == len(full["input_ids"]) - 12


def test_handler_max_seq_length_and_fms_argument_spellings(tiny_tokenizer):
    tok = tiny_tokenizer
    row = mask(
        tok,
        tok.chat_template,
        [CONVERSATION[1:3]],
        max_seq_length=8,
        conversation_column_name="messages",
        formatted_text_column_name="ignored",
    )[0]
    assert len(row["input_ids"]) == 8
    assert trained_runs(tok, row) == ["4.<|end|>"]


def test_conversation_without_assistant_trains_nothing(tiny_tokenizer):
    row = mask(tiny_tokenizer, tiny_tokenizer.chat_template, [CONVERSATION[:2]])[0]
    assert set(row["labels"]) == {X}


def test_missing_chat_template_is_a_config_error(tiny_tokenizer):
    with pytest.raises(ConfigError, match="--chat_template"):
        mask(tiny_tokenizer, None, [CONVERSATION])


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ("hello", "not a list of messages"),
        ([{"content": "x"}], "item 0 is not a mapping with a string 'role'"),
        ([{"role": "user"}], "has no 'content'"),
    ],
)
def test_malformed_conversations_are_data_errors(tiny_tokenizer, messages, problem):
    bound = bind_handler(
        "tokenize_and_apply_chat_template_with_masking",
        HandlerArguments(),
        "datasets[0].data_handlers[0]",
    )
    batch = {"messages": [messages]}
    with pytest.raises(DataError, match=problem):
        bound.info.fn(batch, bound.args, ctx_for(tiny_tokenizer, tiny_tokenizer.chat_template))


def test_apply_tokenizer_chat_template_renders_text(tiny_tokenizer):
    bound = bind_handler(
        "apply_tokenizer_chat_template",
        HandlerArguments(
            fn_kwargs={
                "formatted_text_column_name": "text",
                "conversation_column_name": "messages",
            }
        ),
        "datasets[0].data_handlers[0]",
    )
    rows = [{"messages": CONVERSATION[1:3]}]
    out = apply_handler(
        Dataset.from_list(rows), bound, ctx_for(tiny_tokenizer, tiny_tokenizer.chat_template)
    )
    assert out[0]["text"] == "<s><|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4.<|end|>\n"


def test_whole_row_as_messages_for_fms_templates(tiny_tokenizer):
    # fms's multi-turn test template reads messages['messages']: the whole row is `messages`.
    template = (
        "{% for m in messages['messages'] %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + "
        "eos_token }}{% endfor %}"
    )
    bound = bind_handler(
        "apply_tokenizer_chat_template",
        HandlerArguments(fn_kwargs={"dataset_text_field": "formatted_chat_data"}),
        "datasets[0].data_handlers[0]",
    )
    out = apply_handler(
        Dataset.from_list([{"messages": CONVERSATION[1:3]}]),
        bound,
        ctx_for(tiny_tokenizer, template),
    )
    assert out[0]["formatted_chat_data"] == "<|user|>\nWhat is 2+2?</s><|assistant|>\n4.</s>"
