"""The one-rendering path (print-only templates) gives exactly what a real rendering gives."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tuning.data.labels import chat

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
TINY = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TRIM = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
BRANCHING = (
    "{% for m in messages %}{% if 'secret' in m['content'] %}[redacted]{% else %}"
    "{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
)


@pytest.mark.parametrize(
    ("template", "mode"), [(TINY, "raw"), (CHATML, "raw"), (LLAMA3_TRIM, "trim"), (BRANCHING, None)]
)
def test_content_mode(template, mode):
    assert chat.content_mode(template) == mode


def _slow(template, messages):
    """The two-rendering method: the real rendering plus the marked one."""
    suffix = chat.end_of_turn_text(template, tuple(sorted(SPECIAL.items())))
    text, _ = chat.render(template, messages, SPECIAL)
    spans = chat.spans_by_marker(template, messages, SPECIAL, text, suffix)
    return text, spans


text_st = st.text(alphabet=st.sampled_from([*"ab <|>\n\tuser", "é"]), min_size=0, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    template=st.sampled_from([TINY, CHATML, LLAMA3_TRIM]),
    turns=st.lists(st.tuples(text_st, text_st), min_size=1, max_size=4),
    system=st.one_of(st.none(), text_st),
)
def test_single_rendering_matches_real_rendering(template, turns, system):
    messages = [] if system is None else [{"role": "system", "content": system}]
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    text, spans = chat.assistant_spans(template, messages, SPECIAL)
    real_text, real_spans = _slow(template, messages)
    assert text == real_text
    if real_spans is not None:
        assert spans == real_spans


def test_branching_template_still_rendered_for_real():
    messages = [
        {"role": "user", "content": "the secret?"},
        {"role": "assistant", "content": "no"},
    ]
    text, spans = chat.assistant_spans(BRANCHING, messages, SPECIAL)
    assert text == "[redacted]assistant: no\n"
    # The per-turn prefix method (the fallback) cannot tell the header from the answer here.
    assert [text[a:b] for a, b in spans] == ["assistant: no"]


@settings(max_examples=80, deadline=None)
@given(
    template=st.sampled_from([TINY, CHATML, LLAMA3_TRIM, BRANCHING]),
    conversations=st.lists(
        st.tuples(
            st.one_of(st.none(), text_st),
            st.lists(st.tuples(text_st, text_st), min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_batch_rendering_matches_one_by_one(template, conversations):
    """Conversations sharing a role sequence share one rendered layout; the result is still
    what each conversation gives alone."""
    batch = [
        ([] if system is None else [{"role": "system", "content": system}])
        + [m for user, bot in turns for m in ({"role": "user", "content": user},
                                              {"role": "assistant", "content": bot})]
        for system, turns in conversations
    ]  # fmt: skip
    expected = [chat.assistant_spans(template, messages, SPECIAL) for messages in batch]
    assert chat.assistant_spans_batch(template, batch, SPECIAL) == expected


def test_batch_rendering_keeps_per_conversation_variables_apart():
    template = (
        "{% if messages[0]['role'] == 'system' %}{% set sys = 'S' %}{% endif %}"
        "[{{ sys | default('none') }}]{% for m in messages %}{{ m['content'] }};{% endfor %}"
    )
    batch = [
        [{"role": "system", "content": "S"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "b"}],
    ]
    assert chat.content_mode(template) == "raw"  # so the batch is rendered in one call
    texts = [text for text, _ in chat.assistant_spans_batch(template, batch, SPECIAL)]
    assert texts == ["[S]S;a;", "[none]u;b;"]


@settings(max_examples=300, deadline=None)
@example(between="", following="<|end|>", suffix="<|end|>")  # the next content holds it
@example(between=" <|e", following="nd|>", suffix="<|end|>")  # it starts before the content
@example(between="\n<|end|>x", following="", suffix="<|end|>")
@given(
    between=st.text(alphabet=st.sampled_from([*" \n\t<|end>x"]), max_size=8),
    following=st.text(alphabet=st.sampled_from([*" \n<|end>x"]), max_size=8),
    suffix=st.sampled_from(["", "<|end|>", "</s>", "\n"]),
)
def test_end_of_turn_extension_decided_from_the_layout_alone_is_exact(between, following, suffix):
    """When the text after a content decides the extension, it is what the whole text gives."""
    fixed = chat._fixed_extension(between, suffix)
    if fixed is not None:
        assert fixed == chat._extend_by(between + following, 0, suffix)
    else:  # undecided: the next content can reach into the end-of-turn scan
        assert suffix and suffix.startswith(between.lstrip(" \t\n")[: len(suffix)])
