"""Render a conversation once and find the assistant spans to train.

Templates with `{% generation %}` markers give the spans directly. Stock templates without them
are rendered once and each message's content is located in order (linear in the number of turns);
the assistant's end-of-turn text, learnt once per template from a probe conversation, is added to
each span so the model learns to stop. If a template rewrites message content so it cannot be
found, the per-turn prefix method (quadratic, but exact for well-behaved templates) is used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from tuning.data.masking import Span

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PROBE_USER = ["Q7x", "Q8y"]
_PROBE_ASSISTANT = ["A7x", "A8y"]

Message = Mapping[str, Any]


def has_generation_markers(template: str) -> bool:
    return bool(_GENERATION_MARKER.search(template))


def render(
    template: str,
    messages: Sequence[Message],
    special_tokens: Mapping[str, str],
    *,
    add_generation_prompt: bool = False,
    with_indices: bool = False,
) -> tuple[str, list[Span]]:
    """Render with transformers' sandboxed jinja (strftime_now, raise_exception available)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template(
        conversations=[list(messages)],
        chat_template=template,
        return_assistant_tokens_mask=with_indices,
        add_generation_prompt=add_generation_prompt,
        **special_tokens,
    )
    spans = [tuple(pair) for pair in indices[0]] if with_indices else []
    return rendered[0], spans


@lru_cache(maxsize=32)
def end_of_turn_text(template: str, special_items: tuple[tuple[str, str], ...]) -> str:
    """What the template writes right after an assistant message's content (e.g. '<|im_end|>')."""
    special = dict(special_items)
    one_turn = [
        {"role": "user", "content": _PROBE_USER[0]},
        {"role": "assistant", "content": _PROBE_ASSISTANT[0]},
    ]
    two_turns = [
        *one_turn,
        {"role": "user", "content": _PROBE_USER[1]},
        {"role": "assistant", "content": _PROBE_ASSISTANT[1]},
    ]
    try:
        last, _ = render(template, one_turn, special)
        middle, _ = render(template, two_turns, special)
    except Exception:  # a template that rejects the probe: no suffix can be learnt
        return ""
    after_last = last[last.rfind(_PROBE_ASSISTANT[0]) + len(_PROBE_ASSISTANT[0]) :]
    start = middle.find(_PROBE_ASSISTANT[0]) + len(_PROBE_ASSISTANT[0])
    after_middle = middle[start : middle.find(_PROBE_USER[1], start)]
    common = []
    for a, b in zip(after_last, after_middle):
        if a != b:
            break
        common.append(a)
    return "".join(common).rstrip()


def _extend_by(text: str, end: int, suffix: str) -> int:
    """Extend a span end over the end-of-turn text when it follows (whitespace between allowed)."""
    if not suffix:
        return end
    probe = end
    while probe < len(text) and text[probe] in " \t\n" and not text.startswith(suffix, probe):
        probe += 1
    return probe + len(suffix) if text.startswith(suffix, probe) else end


def _content_text(message: Message) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style blocks: text parts only
        return "".join(
            str(block.get("text", "")) for block in content if isinstance(block, Mapping)
        )
    return "" if content is None else str(content)


def spans_by_search(text: str, messages: Sequence[Message], suffix: str) -> list[Span] | None:
    """Locate each message's content in order; None when a content is not found verbatim."""
    spans: list[Span] = []
    cursor = 0
    for message in messages:
        content = _content_text(message)
        needle = content if content in text[cursor:] else content.strip()
        if not needle:
            continue
        position = text.find(needle, cursor)
        if position < 0:
            return None
        end = position + len(needle)
        if message.get("role") == "assistant":
            end = _extend_by(text, end, suffix)
            spans.append((position, end))
        cursor = end
    return spans


def spans_by_prefix(
    template: str, messages: Sequence[Message], special: Mapping[str, str]
) -> tuple[str, list[Span]]:
    """The second method: re-render the conversation up to each assistant turn."""
    text, _ = render(template, messages, special)
    spans: list[Span] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prefix, _ = render(template, messages[:index], special, add_generation_prompt=True)
        upto, _ = render(template, messages[: index + 1], special)
        end = len(upto.rstrip())
        if text.startswith(prefix) and text.startswith(upto[:end]) and end > len(prefix):
            spans.append((len(prefix), end))
    return text, spans


def assistant_spans(
    template: str, messages: Sequence[Message], special: Mapping[str, str]
) -> tuple[str, list[Span]]:
    """Render once; return the text and the character spans of every assistant turn."""
    suffix = end_of_turn_text(template, tuple(sorted(special.items())))
    if has_generation_markers(template):
        text, spans = render(template, messages, special, with_indices=True)
        return text, [(start, _extend_by(text, end, suffix)) for start, end in spans]
    text, _ = render(template, messages, special)
    spans = spans_by_search(text, messages, suffix)
    if spans is None:
        return spans_by_prefix(template, messages, special)
    return text, spans


def special_tokens_of(tokenizer: Any) -> dict[str, str]:
    """The special tokens a chat template may reference (bos_token, eos_token, ...)."""
    values = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, key, None)
        if isinstance(value, str):
            values[key] = value
    return values
