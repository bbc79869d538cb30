"""The data slice of the run plan: every data problem found before any tokenizer or model loads.

Runs in well under a second: it reads the data config once, binds every handler chain once
(validating its arguments), opens each data path and reads its first rows (without `datasets`),
follows the columns through each handler chain, parses every jinja template, and for a flag-only
job picks the processing mode once. It imports no torch, transformers or datasets. Each message
names the flag or key path and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuning.config.schema import DataArgs
from tuning.data.config.load import load_data_config
from tuning.data.config.schema import DataConfig, DatasetSpec
from tuning.data.from_flags import (
    CHAT,
    CHAT_TEXT,
    DEFAULT_CONVERSATION,
    FORMATTER,
    INPUT_OUTPUT,
    TEXT,
    data_config_for,
    first_rows,
    flag_problems,
    pick_mode,
)
from tuning.data.handlers.binding import BoundHandler, bind_dataset_chain
from tuning.data.sources import detect_builder, peek_rows, resolve_data_paths
from tuning.errors import UserError, did_you_mean
from tuning.problems import Problems

PEEK_ROWS = 5
# The data flags the data stage itself reads (finishing rows no handler tokenized, the chat
# template, the zero-label tolerance); the others become the data config or other slices.
ROW_FLAGS = (
    "response_template",
    "instruction_template",
    "dataset_text_field",
    "data_formatter_template",
    "dataset_conversation_field",
    "chat_template",
    "zero_label_tolerance",
)
_PLACEHOLDER_SPECIALS = {"bos_token": "", "eos_token": "", "pad_token": "", "unk_token": ""}


@dataclass(frozen=True)
class DataPlan:
    """What the data stage runs: the data config (loaded or built from the flags) with every
    handler chain bound, the flag-only mode when there is one, and the data flags that finish
    rows no handler tokenized (ROW_FLAGS only)."""

    config: DataConfig
    chains: tuple[tuple[BoundHandler, ...], ...]
    mode: str | None
    flags: DataArgs

    @property
    def streaming(self) -> bool:
        return self.config.dataprocessor.streaming


# ---------------------------------------------------------------------------------------------
# templates


def _chat_environment() -> Any:
    """A jinja environment that parses chat templates as transformers does (generation tags)."""
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body)

    return ImmutableSandboxedEnvironment(extensions=[GenerationTag, loopcontrols])


def chat_template_problem(template: str, where: str) -> str | None:
    """Why a chat template does not parse, or None."""
    from jinja2 import TemplateSyntaxError

    try:
        _chat_environment().parse(template)
    except TemplateSyntaxError as exc:
        return (
            f"{where}: the chat template has a jinja syntax error at line {exc.lineno}: "
            f"{exc.message}. Fix the template."
        )
    return None


def _undeclared(template: str) -> set[str]:
    from jinja2 import meta
    from jinja2.sandbox import SandboxedEnvironment

    return set(meta.find_undeclared_variables(SandboxedEnvironment().parse(template)))


def _template_columns_problem(template: str, rows: list[dict[str, Any]], where: str) -> str | None:
    """A template variable that is neither a column of the first row nor a special token."""
    known = {*rows[0], *_PLACEHOLDER_SPECIALS, "element"} if rows else set()
    missing = sorted(_undeclared(template) - known)
    if not rows or not missing:
        return None
    return (
        f"{where}: the template uses {', '.join(repr(m) for m in missing)}, which "
        f"{'is not a column' if len(missing) == 1 else 'are not columns'} of the data."
        f"{did_you_mean(missing[0], rows[0])} Columns: {', '.join(rows[0])}."
    )


def _render(template: str, row: Mapping[str, Any]) -> str | None:
    from tuning.data.handlers.text import compile_template

    try:
        return compile_template(template).render({**_PLACEHOLDER_SPECIALS, **row, "element": row})
    except Exception:  # reported elsewhere (missing column) or only knowable with the tokenizer
        return None


def _response_template_problem(
    texts: list[str | None], template: str, flag: str, tolerance: float
) -> str | None:
    """The response template must occur in the text, exactly (whitespace included)."""
    known = [text for text in texts if text is not None]
    missing = [text for text in known if template not in text]
    if not missing or (tolerance > 0 and len(missing) < len(known)):
        return None
    return (
        f"--response_template {template!r} does not occur in {len(missing)} of the first "
        f"{len(known)} texts ({flag}), so they would train nothing; e.g. {missing[0][:160]!r}. "
        "It must match the text exactly: check its leading whitespace/newline (backslash "
        "escapes such as \\n are decoded)."
    )


# ---------------------------------------------------------------------------------------------
# data config


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and "content" in m for m in value
    )


def _chain_problems(chain: list[BoundHandler], rows: list[dict[str, Any]], where: str) -> list[str]:
    """Follow the columns through the handlers on the first rows."""
    problems: list[str] = []
    columns: list[str] | None = list(rows[0]) if rows else None
    raw = set(columns or [])
    for bound in chain:
        if columns is None:
            break
        step = f"`{bound.where}` ({bound.info.name})"
        reads = bound.args.reads() if hasattr(bound.args, "reads") else []
        for column in reads:
            if column not in columns:
                problems.append(
                    f"{step} reads column '{column}', which the data does not have at that "
                    f"step.{did_you_mean(column, columns)} Columns there: "
                    f"{', '.join(columns) or '(none)'}."
                )
        conversation = getattr(bound.args, "conversation_column", None) or getattr(
            bound.args, "conversation_column_name", None
        )
        if (
            conversation in raw
            and conversation in columns
            and not all(_is_conversation(row.get(conversation)) for row in rows)
        ):
            problems.append(
                f"{step}: column '{conversation}' is not a list of {{role, content}} messages "
                "in every one of the first rows. Fix the data or the column name."
            )
        template = getattr(bound.args, "template", None)
        if isinstance(template, str) and columns == list(rows[0]):
            problem = _template_columns_problem(template, rows, step)
            if problem:
                problems.append(problem)
        removed = bound.arguments.remove_columns
        removed_list = list(columns) if removed == "all" else list(removed or [])
        after = getattr(bound.args, "columns_after", None)
        columns = after(columns, removed_list) if after else None
    return problems


def _dataset_problems(
    i: int, spec: DatasetSpec, config: DataConfig, chain: list[BoundHandler] | None
) -> list[str]:
    where = f"datasets[{i}]"
    base = config.source_path.parent if config.source_path else Path.cwd()
    try:
        paths = resolve_data_paths(spec.data_paths, base_dir=base, field=f"{where}.data_paths")
        builder = detect_builder(paths, spec.builder)
        rows = peek_rows(paths, builder, PEEK_ROWS, split_name=spec.dataset_split_name)
    except UserError as exc:
        return [f"`{where}` ({spec.name}): {exc}"]
    problems = []
    split = spec.split
    if config.dataprocessor.streaming and split and (split.validation > 0 or split.train < 1):
        problems.append(
            f"`{where}.split` ({spec.name}): split is not supported with streaming: true (a "
            "stream has no length to split). Put validation rows in their own dataset with split "
            "{train: 0, validation: 1} and streaming off, or turn streaming off."
        )
    if chain is not None:
        problems += _chain_problems(chain, rows, where)
    return problems


def _bind_chains(config: DataConfig, problems: Problems) -> list[tuple[BoundHandler, ...] | None]:
    """Each dataset's chain bound once (None where a step is wrong; its problems are added)."""
    chains: list[tuple[BoundHandler, ...] | None] = []
    for i, spec in enumerate(config.datasets):
        chain, chain_problems = bind_dataset_chain(i, spec)
        problems.extend(chain_problems)
        chains.append(None if chain is None else tuple(chain))
    return chains


def _from_config_file(data_args: DataArgs, problems: Problems) -> DataPlan | None:
    before = len(problems)
    try:
        config = load_data_config(data_args.data_config_path or "")
    except UserError as exc:
        problems.add(str(exc))
        return None
    if config.dataprocessor.type == "odm":
        problems.add(
            "`dataprocessor.type`: online data mixing (ODM) is not built in tuneforge yet; use "
            "type: default with sampling ratios (datasets[].sampling)."
        )
    try:
        template = config.resolved_chat_template()
    except UserError as exc:
        problems.add(str(exc))
    else:
        if template:
            problems.add(chat_template_problem(template, "`dataprocessor` chat template"))
    chains = _bind_chains(config, problems)
    for i, (spec, chain) in enumerate(zip(config.datasets, chains, strict=True)):
        problems.extend(_dataset_problems(i, spec, config, None if chain is None else list(chain)))
    if len(problems) > before:
        return None
    return _data_plan(config, chains, None, data_args)


# ---------------------------------------------------------------------------------------------
# flags only


def _mode_problems(
    data_args: DataArgs, mode: str, rows: list[dict[str, Any]], flag: str
) -> list[str]:
    problems = []
    tolerance = data_args.zero_label_tolerance
    if mode == TEXT and data_args.response_template:
        column = data_args.dataset_text_field or ""
        texts = [row.get(column) if isinstance(row.get(column), str) else None for row in rows]
        problem = _response_template_problem(texts, data_args.response_template, flag, tolerance)
        problems += [problem] if problem else []
    elif mode == FORMATTER and data_args.data_formatter_template:
        template = data_args.data_formatter_template
        try:
            from tuning.data.handlers.text import compile_template

            compile_template(template)
        except UserError as exc:
            return [f"--data_formatter_template: {exc}"]
        problem = _template_columns_problem(template, rows, "--data_formatter_template")
        if problem:
            return [problem]
        if data_args.response_template:
            texts = [_render(template, row) for row in rows]
            problem = _response_template_problem(
                texts, data_args.response_template, flag, tolerance
            )
            problems += [problem] if problem else []
    elif mode in (CHAT, CHAT_TEXT):
        column = data_args.dataset_conversation_field or DEFAULT_CONVERSATION
        if not all(_is_conversation(row.get(column)) for row in rows):
            problems.append(
                f"{flag}: column '{column}' is not a list of {{role, content}} messages in every "
                "one of the first rows. Fix the data."
            )
    elif mode == INPUT_OUTPUT:
        for row in rows:
            bad = [c for c in ("input", "output") if not isinstance(row.get(c), str)]
            if bad:
                problems.append(
                    f"{flag}: column '{bad[0]}' holds {type(row.get(bad[0])).__name__}, not text, "
                    "in one of the first rows. Fix the data."
                )
                break
    return problems


def _from_flags(data_args: DataArgs, seed: int, problems: Problems) -> DataPlan | None:
    """Pick the flag-only mode once, from the first rows, and build the equivalent config."""
    modes: dict[str, str] = {}
    before = len(problems)
    for flag, path in (
        ("--training_data_path", data_args.training_data_path),
        ("--validation_data_path", data_args.validation_data_path),
    ):
        if not path:
            continue
        try:
            rows = first_rows(path, flag, PEEK_ROWS)
            modes[flag] = pick_mode(data_args, rows, f"{flag} {path}")
        except UserError as exc:
            problems.add(str(exc))
            continue
        problems.extend(_mode_problems(data_args, modes[flag], rows, f"{flag} {path}"))
    if len(set(modes.values())) > 1:
        problems.add(
            "--training_data_path and --validation_data_path hold different kinds of rows "
            f"({modes['--training_data_path']} vs {modes['--validation_data_path']}); give both "
            "the same columns."
        )
    if len(problems) > before or "--training_data_path" not in modes:
        return None
    mode = modes["--training_data_path"]
    config = data_config_for(mode, data_args, seed)
    chains = _bind_chains(config, problems)
    if len(problems) > before:
        return None
    return _data_plan(config, chains, mode, data_args)


def _data_plan(
    config: DataConfig,
    chains: list[tuple[BoundHandler, ...] | None],
    mode: str | None,
    data_args: DataArgs,
) -> DataPlan:
    """The plan once every chain bound (callers return early on any problem)."""
    bound = tuple(chain or () for chain in chains)
    flags = DataArgs(**{name: getattr(data_args, name) for name in ROW_FLAGS})
    return DataPlan(config=config, chains=bound, mode=mode, flags=flags)


def _with_seed(plan: DataPlan, seed: int) -> DataPlan:
    """The run's --seed, unless the data config names its own (a copy: the loaded one stays)."""
    config = plan.config
    if "seed" in config.dataprocessor.model_fields_set:
        return plan
    processor = config.dataprocessor.model_copy(update={"seed": seed})
    return replace(plan, config=config.model_copy(update={"dataprocessor": processor}))


def build_data_plan(data_args: DataArgs, seed: int, problems: Problems) -> DataPlan | None:
    """The data slice of the run plan, or None with every problem added to `problems`.

    The data config is read once and its handler chains bound once; a flag-only job's mode is
    picked once. Only the first rows of each data file are read, without `datasets`.
    """
    before = len(problems)
    conflicts = flag_problems(data_args)
    problems.extend(conflicts)
    if data_args.chat_template:
        problems.add(chat_template_problem(data_args.chat_template, "--chat_template"))
    if conflicts:  # which data to read is unclear
        return None
    if data_args.data_config_path:
        plan = _from_config_file(data_args, problems)
    else:
        plan = _from_flags(data_args, seed, problems)
    if plan is None or len(problems) > before:
        return None
    return _with_seed(plan, seed)


def plan_data(data_args: DataArgs, *, seed: int = 42) -> DataPlan:
    """build_data_plan for callers that want only the data (preview, tests, benchmarks)."""
    problems = Problems()
    plan = build_data_plan(data_args, seed, problems)
    problems.raise_if_any("The data")
    assert plan is not None
    return plan
