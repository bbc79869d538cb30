"""See what the model will train on before training: `python -m tuning.tools.preview`.

Loads only the tokenizer (no model weights), runs the same data pipeline as training and prints,
per dataset, a few samples with the trained tokens highlighted, the token-length summary, the
truncation and zero-label counts and the mixture. `--html FILE` writes the same as one
standalone page.

    python -m tuning.tools.preview --data_config data_configs/chat_assistant_only.yaml \\
        --tokenizer artifacts/tiny-llama -n 3
    python -m tuning.tools.preview --training_data_path data.jsonl --dataset_text_field output \\
        --response_template '\\n### Response:' --tokenizer artifacts/tiny-llama
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.errors import UserError
from tuning.models.tokenizer import effective_max_length, open_tokenizer

IGNORE_INDEX = -100
ANSI_TRAINED = "\x1b[1;32m"
ANSI_RESET = "\x1b[0m"


@dataclass
class Sample:
    """One sample as (text, trained) pieces, decoded run by run."""

    pieces: list[tuple[str, bool]]

    def plain(self, open_mark: str = "[[", close_mark: str = "]]") -> str:
        return "".join(f"{open_mark}{t}{close_mark}" if on else t for t, on in self.pieces)

    def ansi(self) -> str:
        return self.plain(ANSI_TRAINED, ANSI_RESET)

    def html(self) -> str:
        return "".join(
            f'<span class="trained">{html.escape(t)}</span>' if on else html.escape(t)
            for t, on in self.pieces
        )


def split_sample(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int]) -> Sample:
    """Group consecutive tokens by whether they are trained and decode each run."""
    pieces: list[tuple[str, bool]] = []
    run: list[int] = []
    state: bool | None = None
    for token, label in zip(input_ids, labels, strict=True):
        trained = label != IGNORE_INDEX
        if state is not None and trained != state:
            pieces.append((tokenizer.decode(run), state))
            run = []
        run.append(token)
        state = trained
    if run:
        pieces.append((tokenizer.decode(run), bool(state)))
    return Sample(pieces)


def length_summary(lengths: Sequence[int]) -> dict[str, int]:
    """min / median / p95 / max of the token lengths."""
    import numpy as np

    if not len(lengths):
        return {"min": 0, "median": 0, "p95": 0, "max": 0}
    values = np.asarray(lengths)
    return {
        "min": int(values.min()),
        "median": int(np.median(values)),
        "p95": int(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def length_histogram(lengths: Sequence[int], bins: int = 8, width: int = 30) -> list[str]:
    """A text histogram of token lengths: one line per bin, range, count and a bar."""
    import numpy as np

    if not len(lengths):
        return []
    values = np.asarray(lengths)
    low, high = int(values.min()), int(values.max())
    edges = np.linspace(low, high + 1, num=min(bins, high - low + 1) + 1)
    counts, _ = np.histogram(values, bins=edges)
    starts = np.ceil(edges[:-1]).astype(int)
    stops = np.ceil(edges[1:]).astype(int) - 1
    peak = max(int(counts.max()), 1)
    labels = [str(a) if a == b else f"{a}-{b}" for a, b in zip(starts, stops, strict=True)]
    pad = max(len(label) for label in labels)
    return [
        f"{label:>{pad}} {int(c):>6} {'#' * round(width * int(c) / peak)}".rstrip()
        for label, c in zip(labels, counts, strict=True)
    ]


@dataclass
class DatasetPreview:
    name: str
    samples: list[Sample]
    lengths: dict[str, int]
    facts: str
    histogram: list[str] = field(default_factory=list)


def build_previews(prepared: Any, tokenizer: Any, n: int) -> list[DatasetPreview]:
    """Per dataset: the first n samples, the length summary and the counts."""
    previews = []
    for report in prepared.report.datasets:
        dataset = prepared.parts[report.name]
        rows = [dict(row) for row in dataset.take(n)]
        if prepared.streaming:
            lengths = [len(row["input_ids"]) for row in dataset.take(max(n, 256))]
        else:
            from tuning.data.report import row_stats

            lengths = row_stats(dataset).lengths.tolist()
        facts = (
            f"{report.rows} samples{' (first rows of the stream)' if report.sampled else ''}, "
            f"{report.tokens} tokens, {report.trained_pct:.1f}% trained; "
            f"{report.filtered_rows} removed by the handlers' filters; "
            f"prompt trimmed in {report.truncated_prompt_rows}, response trimmed in "
            f"{report.truncated_response_rows}; {report.zero_label_rows} without a trained token "
            "(dropped)"
        )
        if report.audit is not None and report.audit.rows_checked:
            facts += (
                f"; mask audit: {report.audit.row_agreement_pct:.0f}% of "
                f"{report.audit.rows_checked} rows agree with the second method"
            )
        previews.append(
            DatasetPreview(
                name=report.name,
                samples=[split_sample(tokenizer, r["input_ids"], r["labels"]) for r in rows],
                lengths=length_summary(lengths),
                facts=facts,
                histogram=length_histogram(lengths),
            )
        )
    return previews


def render_text(previews: list[DatasetPreview], mixture: str, *, color: bool) -> str:
    lines = []
    for preview in previews:
        lengths = ", ".join(f"{k} {v}" for k, v in preview.lengths.items())
        lines += [f"=== {preview.name} ===", preview.facts + ".", f"token lengths: {lengths}"]
        lines += [f"  {line}" for line in preview.histogram] + [""]
        for index, sample in enumerate(preview.samples, start=1):
            lines += [f"--- sample {index} ---", sample.ansi() if color else sample.plain(), ""]
    legend = "trained tokens in green" if color else "trained tokens inside [[...]]"
    lines += [mixture, f"({legend})"]
    return "\n".join(lines)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tuneforge data preview</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
pre {{ white-space: pre-wrap; background: #f6f6f6; padding: .8em; border-radius: 4px; }}
.trained {{ background: #c8f7c5; color: #064; }}
.facts {{ color: #444; }}
</style></head><body>
<h1>Data preview</h1>
<p>Highlighted text is trained (its labels are not -100).</p>
{body}
<h2>Mixture</h2><pre>{mixture}</pre>
</body></html>
"""


def render_html(previews: list[DatasetPreview], mixture: str) -> str:
    body = []
    for preview in previews:
        lengths = ", ".join(f"{k} {v}" for k, v in preview.lengths.items())
        body.append(f"<h2>{html.escape(preview.name)}</h2>")
        body.append(f'<p class="facts">{html.escape(preview.facts)}. Token lengths: {lengths}.</p>')
        if preview.histogram:
            body.append(f"<pre>{html.escape(chr(10).join(preview.histogram))}</pre>")
        for index, sample in enumerate(preview.samples, start=1):
            body.append(f"<h3>sample {index}</h3><pre>{sample.html()}</pre>")
    return _PAGE.format(body="\n".join(body), mixture=html.escape(mixture))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.tools.preview",
        description="Show what the model will train on: samples with trained tokens "
        "highlighted, lengths, truncation, zero-label counts and the mixture.",
    )
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (no weights load)")
    parser.add_argument("--data_config", "--data_config_path", dest="data_config_path")
    parser.add_argument("--training_data_path")
    parser.add_argument("--validation_data_path")
    for flag in ("dataset_text_field", "dataset_conversation_field"):
        parser.add_argument(f"--{flag}")
    for flag in (
        "response_template",
        "instruction_template",
        "data_formatter_template",
        "chat_template",
    ):
        parser.add_argument(f"--{flag}", help="backslash escapes are decoded")
    parser.add_argument("--zero_label_tolerance", type=float, default=0.0)
    parser.add_argument("--max_seq_length", type=int, default=4096)
    parser.add_argument("-n", type=int, default=5, help="samples shown per dataset")
    parser.add_argument("--html", type=Path, help="also write a standalone HTML page here")
    parser.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="ANSI colours"
    )
    return parser


def _data_args(options: argparse.Namespace) -> Any:
    from tuning.config.parse import decode_escapes
    from tuning.config.schema import DataArgs

    values = {
        name: getattr(options, name)
        for name in DataArgs.model_fields
        if getattr(options, name, None) is not None
    }
    for name, model_field in DataArgs.model_fields.items():
        extra = model_field.json_schema_extra or {}
        if isinstance(extra, dict) and extra.get("unescape") and isinstance(values.get(name), str):
            values[name] = decode_escapes(values[name])
    return DataArgs(**values)


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    options = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from tuning.data.plan import plan_data

        data_args = _data_args(options)
        plan = plan_data(data_args)
        tokenizer = open_tokenizer(
            options.tokenizer,
            flag="--tokenizer",
            chat_template=data_args.chat_template,
            add_special_tokens=data_args.add_special_tokens or (),
        )
        import datasets

        from tuning.data.pipeline import prepare_datasets

        datasets.disable_progress_bars()
        max_length = effective_max_length(options.max_seq_length, True, tokenizer)
        prepared = prepare_datasets(plan, tokenizer, max_length)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    previews = build_previews(prepared, tokenizer, options.n)
    mixture = prepared.report.table()
    color = options.color == "always" or (options.color == "auto" and sys.stdout.isatty())
    print(render_text(previews, mixture, color=color))
    if options.html:
        options.html.write_text(render_html(previews, mixture), encoding="utf-8")
        print(f"wrote {options.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
