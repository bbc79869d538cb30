"""Tests for the handler registry and the built-in handlers.

Why: handlers decide what the model is trained on. Labels must be exactly right however the
response template's tokens merge with their neighbours, handler arguments must be checked (fms
silently ignores misspelt ones), and fms's older names and argument spellings must keep working.
Expected labels are built from token ids of the tiny tokenizer, never from the code under test.
"""

from __future__ import annotations

import logging
import textwrap

import pytest
from datasets import Dataset
from pydantic import Field

from tuning.data.config.schema import HandlerArguments, HandlerSpec
from tuning.data.handlers import (
    HandlerArgs,
    HandlerContext,
    apply_handler,
    apply_handler_spec,
    available_handlers,
    bind_handler,
    register_handler,
    registry,
    resolve_handler,
)
from tuning.data.handlers import apply as handler_apply
from tuning.data.labels.base import IGNORE_INDEX
from tuning.data.labels.chat import special_tokens_of
from tuning.errors import ConfigError, DataError
from tuning.tools.data_docs import render_handlers_markdown

X = IGNORE_INDEX
EOS = 2


def ctx_for(tokenizer, max_len: int | None = 128, name: str = "ds") -> HandlerContext:
    return HandlerContext(
        tokenizer=tokenizer,
        max_seq_length=max_len,
        dataset_name=name,
        chat_template=tokenizer.chat_template,
        special_tokens=special_tokens_of(tokenizer),
    )


def run(name: str, rows: list[dict], ctx: HandlerContext, **arguments) -> Dataset:
    bound = bind_handler(name, HandlerArguments(**arguments), "datasets[0].data_handlers[0]")
    return apply_handler(Dataset.from_list(rows), bound, ctx)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def is_subsequence(needle: list[int], haystack: list[int]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack)))


# --- completion mask after a response template --------------------------------------------------


def test_response_template_that_tokenizes_differently_in_context(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = "### Input: hi\n\n### Response:"
    text = prompt + " complaint"
    # The template alone tokenizes as R|espon|se|:, in context as ' Response'|':' -- a token-id
    # search for the template would never find it.
    standalone = ids(tok, "Response:")
    in_context = ids(tok, text)
    assert standalone == [57, 311, 301, 33]
    assert not is_subsequence(standalone, in_context)

    # context-independent pieces: the prompt, ' complaint', '</s>'
    prompt_ids = ids(tok, prompt)
    assert [*in_context, EOS] == [*prompt_ids, 315, EOS]
    expected = [X] * len(prompt_ids) + [315, EOS]

    for template in ("Response:", "\n### Response:", "### Response:"):
        out = run(
            "tokenize_with_completion_mask",
            [{"text": text}],
            ctx_for(tok),
            fn_kwargs={"text_column_name": "text", "response_template": template},
        )
        assert out[0]["input_ids"] == [*prompt_ids, 315, EOS]
        assert out[0]["labels"] == expected, template


def test_template_ending_inside_a_token_trains_that_token(tiny_tokenizer):
    # "### Response: " ends with the space that ' complaint' starts with: the token straddles the
    # boundary and must be trained, or the response would lose its first word.
    tok = tiny_tokenizer
    out = run(
        "tokenize_with_completion_mask",
        [{"text": "### Input: hi\n\n### Response: complaint"}],
        ctx_for(tok),
        fn_kwargs={"text_column_name": "text", "response_template": "### Response: "},
    )
    assert [t for t in out[0]["labels"] if t != X] == [315, EOS]


def test_completion_mask_without_template_trains_everything_and_adds_eos_once(tiny_tokenizer):
    tok = tiny_tokenizer
    out = run(
        "tokenize_with_completion_mask",
        [{"t": "Add 0 and 8."}, {"t": "Add 0 and 8.</s>"}],
        ctx_for(tok),
        fn_kwargs={"text_column_name": "t"},
    )
    for row in out:
        assert row["input_ids"] == [623, 964, 347, 553, 21, EOS]
        assert row["labels"] == [623, 964, 347, 553, 21, EOS]


def test_template_never_found_trains_nothing(tiny_tokenizer):
    out = run(
        "tokenize_with_completion_mask",
        [{"text": "### Input: hi\n\n### Response: complaint"}],
        ctx_for(tiny_tokenizer),
        fn_kwargs={"text_column_name": "text", "response_template": " ### Response:"},
    )
    assert set(out[0]["labels"]) == {X}


def test_multi_turn_completion_mask_with_instruction_template(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "<|user|>\nWhat is 2+2?<|assistant|>\n4.<|user|>\nWhat is 2+2?<|assistant|>\n4."
    out = run(
        "tokenize_with_completion_mask",
        [{"text": text}],
        ctx_for(tok),
        fn_kwargs={
            "text_column_name": "text",
            "response_template": "<|assistant|>\n",
            "instruction_template": "<|user|>",
        },
    )
    turn = [5, 206, *ids(tok, "What is 2+2?"), 6, 206]
    assert out[0]["input_ids"] == [*turn, 27, 21, *turn, 27, 21, EOS]
    assert out[0]["labels"] == [X] * len(turn) + [27, 21] + [X] * len(turn) + [27, 21, EOS]


# --- input/output masking -----------------------------------------------------------------------


def test_input_output_masking_joins_like_fms_and_trains_output_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [
        {"input": "Add 0 and 8.", "output": "8"},  # no whitespace at the join: fms adds a space
        {"input": "### Input: hi\n\n### Response:", "output": " complaint"},  # already spaced
    ]
    out = run("tokenize_and_apply_input_masking", rows, ctx_for(tok), remove_columns="all")
    assert out.column_names == ["input_ids", "labels", *registry.STAT_COLUMNS]
    assert out[0]["input_ids"] == [623, 964, 347, 553, 21, 553, EOS]  # "Add 0 and 8. 8</s>"
    assert out[0]["labels"] == [X] * 5 + [553, EOS]
    prompt_ids = ids(tok, "### Input: hi\n\n### Response:")
    assert out[1]["input_ids"] == [*prompt_ids, 315, EOS]
    assert out[1]["labels"] == [X] * len(prompt_ids) + [315, EOS]


def test_input_output_masking_without_eos_and_with_fms_older_argument_names(tiny_tokenizer):
    out = run(
        "tokenize_and_apply_input_masking",
        [{"q": "Add 0 and 8.", "a": " 8"}],
        ctx_for(tiny_tokenizer),
        fn_kwargs={"input_field_name": "q", "output_field_name": "a", "add_eos_token": False},
    )
    assert out[0]["input_ids"] == [623, 964, 347, 553, 21, 553]
    assert out[0]["labels"] == [X] * 5 + [553]


def test_input_masking_truncation_keeps_the_response(tiny_tokenizer):
    out = run(
        "tokenize_and_apply_input_masking",
        [{"input": "Add 0 and 8.", "output": "8"}],
        ctx_for(tiny_tokenizer, max_len=4),
    )
    assert out[0]["input_ids"] == [553, 21, 553, EOS]  # prompt trimmed from the left
    assert out[0]["labels"] == [X, X, 553, EOS]
    assert out[0][registry.TRIMMED_PROMPT] == 3
    assert out[0][registry.TRIMMED_RESPONSE] == 0


def test_missing_input_column_is_a_data_error_with_did_you_mean(tiny_tokenizer):
    with pytest.raises(DataError, match=r"no column 'inptu'.*Did you mean 'input'"):
        run(
            "tokenize_and_apply_input_masking",
            [{"input": "a", "output": "b"}],
            ctx_for(tiny_tokenizer),
            fn_kwargs={"input_column_name": "inptu"},
        )


# --- jinja formatter ----------------------------------------------------------------------------


def test_custom_jinja_template_renders_columns_and_special_tokens(tiny_tokenizer):
    out = run(
        "apply_custom_jinja_template",
        [{"input": "Add 0 and 8.", "output": " 8"}],
        ctx_for(tiny_tokenizer),
        fn_kwargs={
            "formatted_text_column_name": "formatted",
            "template": "### Q: {{input}}\n### A:{{ element['output'] }}{{ eos_token }}",
        },
    )
    assert out[0]["formatted"] == "### Q: Add 0 and 8.\n### A: 8</s>"
    assert out.column_names == ["input", "output", "formatted"]


def test_jinja_then_completion_mask_gives_exact_labels(tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = ctx_for(tok)
    formatted = run(
        "apply_custom_jinja_template",
        [{"input": "Add 0 and 8.", "output": "8"}],
        ctx,
        fn_kwargs={
            "dataset_text_field": "text",  # fms's older spelling of formatted_text_column_name
            "template": "### Q: {{input}}\n### A: {{output}}",
            "add_eos_token": True,
        },
    )
    bound = bind_handler(
        "tokenize_with_completion_mask",
        HandlerArguments(
            fn_kwargs={"text_column_name": "text", "response_template": "\n### A:"},
            remove_columns="all",
        ),
        "datasets[0].data_handlers[1]",
    )
    out = apply_handler(formatted, bound, ctx)
    prompt = ids(tok, "### Q: Add 0 and 8.\n### A:")
    assert out[0]["input_ids"] == [*prompt, 553, EOS]
    assert out[0]["labels"] == [X] * len(prompt) + [553, EOS]


def test_jinja_missing_variable_names_dataset_template_and_key(tiny_tokenizer):
    with pytest.raises(DataError) as info:
        run(
            "apply_custom_jinja_template",
            [{"input": "a", "output": "b"}],
            ctx_for(tiny_tokenizer, name="complaints"),
            fn_kwargs={"formatted_text_column_name": "t", "template": "{{ input }} {{ outptu }}"},
        )
    message = str(info.value)
    for needle in ("complaints", "'{{ input }} {{ outptu }}'", "'outptu'", "Did you mean 'output'"):
        assert needle in message


def test_jinja_is_sandboxed(tiny_tokenizer):
    with pytest.raises(ConfigError, match="unsafe"):
        run(
            "apply_custom_jinja_template",
            [{"input": "a"}],
            ctx_for(tiny_tokenizer),
            fn_kwargs={
                "formatted_text_column_name": "t",
                "template": "{{ input.__class__.__mro__[1].__subclasses__() }}",
            },
        )


def test_jinja_syntax_error_is_refused_with_the_key_path():
    with pytest.raises(ConfigError) as info:
        bind_handler(
            "apply_custom_jinja_template",
            HandlerArguments(fn_kwargs={"formatted_text_column_name": "t", "template": "{{ x"}),
            "datasets[2].data_handlers[1]",
        )
    assert "`datasets[2].data_handlers[1].arguments.fn_kwargs.template`" in str(info.value)
    assert "syntax error" in str(info.value)


# --- tokenize, columns, filters -----------------------------------------------------------------


def test_tokenize_then_duplicate_columns_with_fms_spellings(tiny_tokenizer):
    ctx = ctx_for(tiny_tokenizer, max_len=3)
    tokenized = run(
        "tokenize",
        [{"output": "Add 0 and 8."}],
        ctx,
        batched=True,
        remove_columns="all",
        fn_kwargs={"dataset_text_field": "output"},
    )
    assert tokenized[0]["input_ids"] == [623, 964, 347]
    assert tokenized[0][registry.TRIMMED_RESPONSE] == 2
    bound = bind_handler(
        "duplicate_columns",
        HandlerArguments(
            fn_kwargs={"old_column_name": "input_ids", "new_column_name": "labels"},
            batched=True,
            remove_columns="all",
        ),
        "datasets[0].data_handlers[1]",
    )
    out = apply_handler(tokenized, bound, ctx)
    assert out[0]["labels"] == [623, 964, 347]
    assert out[0][registry.TRIMMED_RESPONSE] == 2  # the stat columns survive remove_columns: all


def test_duplicate_onto_an_existing_column_is_refused(tiny_tokenizer):
    with pytest.raises(DataError, match="already exists"):
        run(
            "duplicate_columns",
            [{"a": 1, "b": 2}],
            ctx_for(tiny_tokenizer),
            fn_kwargs={"existing_column_name": "a", "new_column_name": "b"},
        )


def test_skip_samples_with_large_columns(tiny_tokenizer):
    out = run(
        "skip_samples_with_large_columns",
        [{"t": "abc"}, {"t": "abcdef"}, {"t": "abcd"}],
        ctx_for(tiny_tokenizer),
        fn_kwargs={"column_name": "t", "max_allowed_length": 4},
    )
    assert out["t"] == ["abc", "abcd"]


def test_apply_handler_spec_in_one_call(tiny_tokenizer):
    spec = HandlerSpec(
        name="rename_columns", arguments={"fn_kwargs": {"column_mapping": {"a": "b"}}}
    )
    out = apply_handler_spec(Dataset.from_list([{"a": 1}]), spec, ctx_for(tiny_tokenizer))
    assert out.column_names == ["b"]


def test_rename_select_remove_columns(tiny_tokenizer):
    ctx = ctx_for(tiny_tokenizer)
    rows = [{"input": "a", "output": "b", "extra": 1}]
    renamed = run(
        "rename_columns", rows, ctx, fn_kwargs={"column_mapping": {"input": "instruction"}}
    )
    assert renamed.column_names == ["instruction", "output", "extra"]
    selected = run("select_columns", rows, ctx, fn_kwargs={"column_names": ["input", "output"]})
    assert selected.column_names == ["input", "output"]
    removed = run("remove_columns", rows, ctx, fn_kwargs={"column_names": "extra"})
    assert removed.column_names == ["input", "output"]
    with pytest.raises(DataError, match=r"no column 'extar'.*Did you mean 'extra'"):
        run("remove_columns", rows, ctx, fn_kwargs={"column_names": ["extar"]})


# --- registry -----------------------------------------------------------------------------------


def test_unknown_handler_lists_names_with_did_you_mean():
    with pytest.raises(ConfigError) as info:
        resolve_handler("tokenize_and_apply_input_maskin")
    message = str(info.value)
    assert "Did you mean 'tokenize_and_apply_input_masking'?" in message
    for name in available_handlers():
        assert name in message


def test_bind_names_the_key_path_of_an_unknown_handler():
    with pytest.raises(ConfigError, match=r"`datasets\[1\].data_handlers\[0\].name`"):
        bind_handler("tokenise", HandlerArguments(), "datasets[1].data_handlers[0]")


def test_unknown_fn_kwarg_names_its_key_path_with_did_you_mean():
    with pytest.raises(ConfigError) as info:
        bind_handler(
            "tokenize_and_apply_input_masking",
            HandlerArguments(fn_kwargs={"input_colum_name": "x", "add_eos_token": "maybe"}),
            "datasets[0].data_handlers[2]",
        )
    message = str(info.value)
    assert "`datasets[0].data_handlers[2].arguments.fn_kwargs.input_colum_name`" in message
    assert "Did you mean 'input_column_name'?" in message
    assert "`datasets[0].data_handlers[2].arguments.fn_kwargs.add_eos_token`" in message


def test_two_spellings_of_one_argument_are_refused():
    with pytest.raises(ConfigError, match="another spelling of 'input_column_name'"):
        bind_handler(
            "tokenize_and_apply_input_masking",
            HandlerArguments(fn_kwargs={"input_column_name": "a", "input_field_name": "b"}),
            "datasets[0].data_handlers[0]",
        )


def test_missing_required_argument():
    with pytest.raises(ConfigError, match=r"fn_kwargs.column_mapping`: is required"):
        bind_handler("rename_columns", HandlerArguments(), "datasets[0].data_handlers[0]")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("apply_custom_data_formatting_jinja_template", "apply_custom_jinja_template"),
        ("retain_columns", "select_columns"),
        ("skip_large_text", "skip_samples_with_large_columns"),
    ],
)
def test_deprecated_names_work_with_one_notice(old, new, caplog, monkeypatch):
    monkeypatch.setattr(registry.HANDLERS, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="tuning.registry"):
        assert resolve_handler(old).name == new
        assert resolve_handler(old).name == new
    notices = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(notices) == 1
    assert old in notices[0].getMessage() and new in notices[0].getMessage()


def test_map_settings_that_do_not_apply_are_refused():
    with pytest.raises(ConfigError, match="remove_columns does not apply"):
        bind_handler(
            "skip_samples_with_large_columns",
            HandlerArguments(
                fn_kwargs={"column_name": "t", "max_allowed_length": 3}, remove_columns="all"
            ),
            "datasets[0].data_handlers[0]",
        )


USER_MODULE = '''
from pydantic import BaseModel, ConfigDict
from tuning.data.handlers import HandlerArgs, register_handler


class ShoutArgs(HandlerArgs):
    column: str


@register_handler("shout_test", arguments=ShoutArgs, batched_support=True)
def shout(batch, args, ctx):
    """Upper-case one column."""
    return {args.column: [v.upper() + ctx.dataset_name for v in batch[args.column]]}


class KeepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    longer_than: int


def keep_long(row, args, ctx):
    return len(row["t"]) > args.longer_than


keep_long.arguments = KeepArgs
keep_long.kind = "filter"


class Loose(BaseModel):
    anything: int = 0


def loose(row, args, ctx):
    return row


loose.arguments = Loose


def plain(row):
    return row
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_handlers_mod.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_handlers_mod"
    for name in ("shout_test",):
        registry.HANDLERS._entries.pop(name, None)


def test_user_handler_by_import_path(tiny_tokenizer, user_module):
    ctx = ctx_for(tiny_tokenizer, name="!")
    out = run(f"{user_module}:shout", [{"t": "hi"}], ctx, fn_kwargs={"column": "t"})
    assert out["t"] == ["HI!"]
    with pytest.raises(ConfigError, match=r"fn_kwargs.colum`.*Did you mean 'column'"):
        bind_handler(
            f"{user_module}:shout",
            HandlerArguments(fn_kwargs={"colum": "t"}),
            "datasets[0].data_handlers[0]",
        )


def test_user_handler_with_an_arguments_attribute(tiny_tokenizer, user_module):
    out = run(
        f"{user_module}:keep_long",
        [{"t": "a"}, {"t": "abc"}],
        ctx_for(tiny_tokenizer),
        fn_kwargs={"longer_than": 2},
    )
    assert out["t"] == ["abc"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("my_handlers_mod:plain", "not a data handler"),
        ("my_handlers_mod:loose", "must forbid unknown keys"),
        ("my_handlers_mod:nope", "module 'my_handlers_mod' has no 'nope'"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_bad_user_handlers_are_refused(user_module, path, message):
    with pytest.raises(ConfigError, match=message):
        resolve_handler(path)


def test_registering_a_model_that_allows_extra_keys_is_refused():
    class Loose(HandlerArgs.__base__):  # plain pydantic BaseModel
        x: int = Field(0)

    with pytest.raises(ConfigError, match="must forbid unknown keys"):
        register_handler("loose_test", arguments=Loose)


def test_handlers_markdown_documents_every_handler_alias_and_argument():
    text = render_handlers_markdown()
    assert text == render_handlers_markdown()
    for name, info in available_handlers().items():
        assert f"## `{name}`" in text
        for alias in info.aliases:
            assert f"`{alias}`" in text
        for argument in info.arguments.model_fields:
            assert f"`{argument}`" in text
    assert "(also `dataset_text_field`)" in text
    assert "kind: filter; batched: yes" in text


def test_a_taken_handler_name_is_refused():
    def tokenize(batch, args, ctx):
        return batch

    with pytest.raises(ConfigError, match=r"'tokenize' is already taken by tuning\.data\.handlers"):
        register_handler("tokenize", arguments=registry.HandlerArgs)(tokenize)
    with pytest.raises(ConfigError, match="'retain_columns' is already taken"):
        register_handler("retain_columns", arguments=registry.HandlerArgs)(tokenize)


def test_builtin_handler_cache_key_covers_the_helpers_it_calls(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    helper = tmp_path / "pkg" / "masking.py"
    helper.write_text("RULE = 1\n")
    before = handler_apply.source_digest(tmp_path)
    helper.write_text("RULE = 2\n")
    handler_apply.source_digest.cache_clear()
    assert handler_apply.source_digest(tmp_path) != before

    def user_handler(batch, args, ctx):
        return batch

    builtin = registry.resolve_handler("tokenize_and_apply_chat_template_with_masking").fn
    library = {"digest": "as released"}
    monkeypatch.setattr(handler_apply, "source_digest", lambda folder: library["digest"])
    handler_apply._code_digest.cache_clear()
    first, user_first = (
        handler_apply._code_digest(builtin),
        handler_apply._code_digest(user_handler),
    )
    handler_apply._code_digest.cache_clear()
    library["digest"] = "a helper was edited"
    assert handler_apply._code_digest(builtin) != first  # stale prepared data is never served
    assert handler_apply._code_digest(user_handler) == user_first  # user code: its own source only
    handler_apply._code_digest.cache_clear()


def test_arrow_output_has_the_same_columns_and_types_as_datasets_own_writing(tiny_tokenizer):
    rows = [{"input": "Add " * i + f"{i} and 1.", "output": str(i + 1)} for i in range(5)]
    ctx = ctx_for(tiny_tokenizer, max_len=9)  # the longer rows are fitted
    fast = run("tokenize_and_apply_input_masking", rows, ctx, remove_columns="all")
    assert fast[registry.TRIMMED_PROMPT] == [0, 0, 0, 2, 4]
    kept = run("tokenize_and_apply_input_masking", rows, ctx)  # inputs stay: plain dict path
    assert kept.column_names == ["input", "output", "input_ids", "labels", *registry.STAT_COLUMNS]
    for name in ("input_ids", "labels", *registry.STAT_COLUMNS):
        assert fast.features[name] == kept.features[name]
        assert fast[name] == kept[name]
    assert str(fast.features["input_ids"].feature.dtype) == "int32"
    assert str(fast.features["labels"].feature.dtype) == "int64"


def test_call_returns_arrow_only_when_the_output_replaces_every_kept_column(tiny_tokenizer):
    import pyarrow as pa

    def tokenized(batch, args, ctx):
        return {"input_ids": [[1, 2]], "labels": [[-100, 2]]}

    def other(batch, args, ctx):
        return {"text": ["x"]}

    ctx = ctx_for(tiny_tokenizer)
    assert isinstance(handler_apply._call({}, tokenized, None, ctx, _kept=()), pa.Table)
    assert isinstance(handler_apply._call({}, tokenized, None, ctx, _kept=("labels",)), pa.Table)
    assert isinstance(handler_apply._call({}, tokenized, None, ctx, _kept=("text",)), dict)
    assert isinstance(handler_apply._call({}, tokenized, None, ctx), dict)  # streaming: never
    assert isinstance(handler_apply._call({}, other, None, ctx, _kept=()), dict)


def test_arrow_output_across_worker_processes(tiny_tokenizer):
    rows = [
        {"messages": [{"role": "user", "content": f"Add {i} and 1."},
                      {"role": "assistant", "content": str(i + 1)}]}
        for i in range(12)
    ]  # fmt: skip
    ctx = ctx_for(tiny_tokenizer)
    name = "tokenize_and_apply_chat_template_with_masking"
    one = run(name, rows, ctx, remove_columns="all")
    two = run(name, rows, ctx, remove_columns="all", num_proc=2, batch_size=4)
    assert two.features == one.features
    assert two["input_ids"] == one["input_ids"] and two["labels"] == one["labels"]
