"""Render a conversation once and find the assistant spans to train.

Templates with `{% generation %}` markers give the spans directly. Stock templates without them
are rendered twice: once for real and once with every message's content replaced by a unique
marker. The marked rendering shows exactly where each content lands, so a short answer ("a") is
never mistaken for the same letters inside a role header (searching the rendered text for the
content did exactly that). Linear in the number of turns. The assistant's end-of-turn text, learnt
once per template from a probe conversation, is added to each span so the model learns to stop.
If a template rewrites content (beyond trimming it) or branches on it, the per-turn prefix method
(quadratic, but exact for well-behaved templates) is used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

from tuning.data.labels.base import Span

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
_MARKER = "\ue000{}\ue001"  # private-use characters: never in real data, never rewritten
_PROBE_USER = ["Q7x", "Q8y"]
_PROBE_ASSISTANT = ["A7x", "A8y"]

Message = Mapping[str, Any]


def has_generation_markers(template: str) -> bool:
    return bool(_GENERATION_MARKER.search(template))


_PLAIN_KEYS = frozenset({"role", "content"})


@lru_cache(maxsize=32)
def _compiled(template: str) -> Any:
    """transformers' compiled sandboxed template (strftime_now, raise_exception, generation)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(template)


def render(
    template: str,
    messages: Sequence[Message],
    special_tokens: Mapping[str, str],
    *,
    add_generation_prompt: bool = False,
    with_indices: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, list[Span]]:
    """Render with transformers' sandboxed jinja environment.

    `extra` holds further template variables, such as a row's `tools` and `documents`. Plain
    role/content conversations (the common case) go straight to the compiled template, which
    is what transformers ends up calling, minus its per-call conversions (twice as fast).
    """
    if not with_indices and not extra and all(_PLAIN_KEYS.issuperset(m) for m in messages):
        text = _compiled(template).render(
            messages=list(messages),
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **special_tokens,
        )
        return text, []
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template(
        conversations=[list(messages)],
        chat_template=template,
        return_assistant_tokens_mask=with_indices,
        add_generation_prompt=add_generation_prompt,
        **{**(extra or {}), **special_tokens},
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
    for a, b in zip(after_last, after_middle, strict=False):
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


_MARKER_PATTERN = re.compile("\ue000(\\d+)\ue001")


def _rebuild(skeleton: str, contents: list[str], roles: list[Any]) -> tuple[str, list[Span]] | None:
    """Put each content back in place of its marker; the assistant contents' spans come along.

    None when a marker repeats, comes out of order, or an assistant's is missing: then the
    contents cannot be placed with certainty. Other messages may be left out (e.g. a system
    message the template drops).
    """
    layout = _layout(skeleton, roles, suffix="")
    return None if layout is None else _place(layout, contents, suffix="")


def spans_by_marker(
    template: str,
    messages: Sequence[Message],
    special: Mapping[str, str],
    text: str,
    suffix: str,
    extra: Mapping[str, Any] | None = None,
) -> list[Span] | None:
    """Where each assistant content lands, from a rendering with markers for contents.

    None when the template branches on or rewrites the contents, so the marked rendering does
    not rebuild `text` exactly (a template that only trims contents is handled).
    """
    contents = [message.get("content") for message in messages]
    if not all(isinstance(content, str) for content in contents):
        return None  # multimodal blocks or missing contents: leave them to the prefix method
    marked = [{**message, "content": _MARKER.format(i)} for i, message in enumerate(messages)]
    try:
        skeleton, _ = render(template, marked, special, extra=extra)
    except Exception:  # the template rejects the markers (e.g. it validates contents)
        return None
    roles = [message.get("role") for message in messages]
    for variant in (contents, [content.strip() for content in contents]):
        rebuilt = _rebuild(skeleton, variant, roles)
        if rebuilt is not None and rebuilt[0] == text:
            return [(start, _extend_by(text, end, suffix)) for start, end in rebuilt[1]]
    return None


_TYPE_TESTS = frozenset({"string", "defined", "undefined", "none"})


def _content_uses(node: Any, parents: tuple[Any, ...]) -> Any:
    """Yield (node, ancestors) for every `x['content']` / `x.content` in the template AST."""
    from jinja2 import nodes

    is_item = isinstance(node, nodes.Getitem) and getattr(node.arg, "value", None) == "content"
    if is_item or (isinstance(node, nodes.Getattr) and node.attr == "content"):
        yield node, parents
    for child in node.iter_child_nodes():
        yield from _content_uses(child, (*parents, node))


def _use_mode(parents: tuple[Any, ...]) -> str | None:
    """'raw'/'trim' when a content use only reaches the output (maybe concatenated/trimmed)."""
    from jinja2 import nodes

    mode = "raw"
    for ancestor in reversed(parents):
        if isinstance(ancestor, nodes.Output):
            return mode
        if isinstance(ancestor, nodes.Test) and ancestor.name in _TYPE_TESTS:
            return "test"
        if isinstance(ancestor, nodes.Filter) and ancestor.name == "trim" and mode == "raw":
            mode = "trim"
        elif not isinstance(ancestor, (nodes.Add, nodes.Concat)):
            return None
    return None


@lru_cache(maxsize=32)
def content_mode(template: str) -> str | None:
    """How the template uses message contents: 'raw' or 'trim' when it only prints them.

    Such a template renders a conversation exactly as its marked skeleton with the contents
    put back, so one rendering is enough. Anything else (content in a condition, a variable, a
    method call) returns None and the conversation is rendered for real as well.
    """
    try:
        tree = _compiled(template).environment.parse(template)
    except Exception:
        return None
    modes = {_use_mode(parents) for _, parents in _content_uses(tree, ())} - {"test"}
    return modes.pop() if len(modes) == 1 and None not in modes else None


def _spans_from_skeleton(
    template: str, messages: Sequence[Message], special: Mapping[str, str], mode: str, suffix: str
) -> tuple[str, list[Span]] | None:
    """One rendering with markers; the text is the skeleton with the contents put back."""
    contents = [message.get("content") for message in messages]
    if not all(isinstance(content, str) for content in contents):
        return None
    marked = [{**message, "content": _MARKER.format(i)} for i, message in enumerate(messages)]
    try:
        skeleton, _ = render(template, marked, special)
    except Exception:
        return None
    variant = [c.strip() for c in contents] if mode == "trim" else contents
    layout = _layout(skeleton, [message.get("role") for message in messages], suffix)
    return None if layout is None else _place(layout, variant, suffix)


_SEPARATOR = "\ue002"  # private-use: ends each conversation of a batch rendering


@lru_cache(maxsize=32)
def _batch_compiled(template: str) -> Any:
    """The template inside a loop over conversations: one jinja call renders a whole batch.

    Jinja scopes loop-body variables per iteration, so each conversation renders as it would
    alone; `assistant_spans_batch` still checks the first one against a single rendering.
    """
    loop = "{% for messages in __tuneforge_conversations %}"
    return _compiled(loop + template + _SEPARATOR + "{% endfor %}")


def _skeletons(template: str, batch: list[list[dict[str, Any]]], special: Mapping[str, str]):
    """Marked skeletons of a batch in one rendering, or None when that cannot be trusted."""
    try:
        rendered = _batch_compiled(template).render(
            __tuneforge_conversations=batch,
            tools=None,
            documents=None,
            add_generation_prompt=False,
            **special,
        )
    except Exception:
        return None
    pieces = rendered.split(_SEPARATOR)
    if len(pieces) != len(batch) + 1 or pieces[-1]:
        return None
    if pieces[0] != render(template, batch[0], special)[0]:
        return None
    return pieces[:-1]


def assistant_spans_batch(
    template: str, conversations: Sequence[Sequence[Message]], special: Mapping[str, str]
) -> list[tuple[str, list[Span]]]:
    """assistant_spans for many conversations; print-only templates render the batch at once.

    Such a template's marked skeleton depends only on the sequence of roles (contents are only
    printed, never inspected), so each distinct role sequence of the batch is rendered once and
    its layout reused for every conversation that has it.
    """
    mode = content_mode(template)
    plain = all(
        isinstance(m.get("content"), str)
        and isinstance(m.get("role"), str)
        and _PLAIN_KEYS.issuperset(m)
        for messages in conversations
        for m in messages
    )
    if mode is None or not plain or not conversations:
        return [assistant_spans(template, messages, special) for messages in conversations]
    role_sequences = [tuple(m["role"] for m in messages) for messages in conversations]
    distinct = list(dict.fromkeys(role_sequences))
    marked = [
        [{"role": role, "content": _MARKER.format(i)} for i, role in enumerate(roles)]
        for roles in distinct
    ]
    skeletons = _skeletons(template, marked, special)
    if skeletons is None:
        return [assistant_spans(template, messages, special) for messages in conversations]
    suffix = end_of_turn_text(template, tuple(sorted(special.items())))
    layouts = {
        roles: _layout(skeleton, roles, suffix)
        for roles, skeleton in zip(distinct, skeletons, strict=True)
    }
    results = []
    for roles, messages in zip(role_sequences, conversations, strict=True):
        layout = layouts[roles]
        if layout is None:
            results.append(assistant_spans(template, messages, special))
            continue
        contents = [m["content"].strip() if mode == "trim" else m["content"] for m in messages]
        results.append(_place(layout, contents, suffix))
    return results


@dataclass(frozen=True)
class _Layout:
    """A marked skeleton taken apart: the text before the first content, then per placed
    message (index, text after it, whether it is trained, end-of-turn extension; None when
    the extension depends on the next message's content)."""

    head: str
    steps: tuple[tuple[int, str, bool, int | None], ...]


def _layout(skeleton: str, roles: Sequence[str], suffix: str) -> _Layout | None:
    """The skeleton's layout, or None when the contents cannot be placed with certainty (a
    marker repeats, comes out of order, or an assistant's is missing)."""
    parts = _MARKER_PATTERN.split(skeleton)
    order = [int(index) for index in parts[1::2]]
    if any(later <= earlier for earlier, later in pairwise(order)):
        return None
    placed = set(order)
    if any(role == "assistant" and i not in placed for i, role in enumerate(roles)):
        return None
    steps = []
    for position, index in enumerate(order):
        between = parts[2 * position + 2]
        trained = roles[index] == "assistant"
        steps.append((index, between, trained, _fixed_extension(between, suffix) if trained else 0))
    return _Layout(parts[0], tuple(steps))


def _fixed_extension(between: str, suffix: str) -> int | None:
    """`_extend_by` decided from the text after a content alone, or None when the next
    content could change the answer (the scan reaches it)."""
    if not suffix:
        return 0
    probe = 0
    while (
        probe < len(between) and between[probe] in " \t\n" and not between.startswith(suffix, probe)
    ):
        probe += 1
    if between.startswith(suffix, probe):
        return probe + len(suffix)
    return None if suffix.startswith(between[probe:]) else 0


def _place(layout: _Layout, contents: Sequence[str], suffix: str) -> tuple[str, list[Span]]:
    """Put the contents into a layout: the rendered text and the trained spans."""
    pieces = [layout.head]
    length = len(layout.head)
    spans: list[Span] = []
    undecided = []
    for index, between, trained, extension in layout.steps:
        content = contents[index]
        if trained:
            end = length + len(content)
            if extension is None:
                undecided.append(len(spans))
            spans.append((length, end + (extension or 0)))
        pieces += (content, between)
        length += len(content) + len(between)
    text = "".join(pieces)
    for position in undecided:
        start, end = spans[position]
        spans[position] = (start, _extend_by(text, end, suffix))
    return text, spans


def spans_by_prefix(
    template: str,
    messages: Sequence[Message],
    special: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, list[Span]]:
    """The second method: re-render the conversation up to each assistant turn."""
    text, _ = render(template, messages, special, extra=extra)
    spans: list[Span] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prefix, _ = render(
            template, messages[:index], special, add_generation_prompt=True, extra=extra
        )
        upto, _ = render(template, messages[: index + 1], special, extra=extra)
        end = len(upto.rstrip())
        if text.startswith(prefix) and text.startswith(upto[:end]) and end > len(prefix):
            spans.append((len(prefix), end))
    return text, spans


def assistant_spans(
    template: str,
    messages: Sequence[Message],
    special: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, list[Span]]:
    """Render once; return the text and the character spans of every assistant turn."""
    suffix = end_of_turn_text(template, tuple(sorted(special.items())))
    if has_generation_markers(template):
        text, spans = render(template, messages, special, with_indices=True, extra=extra)
        return text, [(start, _extend_by(text, end, suffix)) for start, end in spans]
    mode = None if extra else content_mode(template)
    if mode is not None:
        found = _spans_from_skeleton(template, messages, special, mode, suffix)
        if found is not None:
            return found
    text, _ = render(template, messages, special, extra=extra)
    spans = spans_by_marker(template, messages, special, text, suffix, extra)
    if spans is None:
        return spans_by_prefix(template, messages, special, extra)
    return text, spans


def special_tokens_of(tokenizer: Any) -> dict[str, str]:
    """The special tokens a chat template may reference (bos_token, eos_token, ...)."""
    values = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, key, None)
        if isinstance(value, str):
            values[key] = value
    return values
