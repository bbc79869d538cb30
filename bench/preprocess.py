"""Chat-masking preprocessing throughput: tuneforge's handler vs TRL's own per-example path.

Side by side in one run, on the same conversations:
1. the masking step alone: our `tokenize_and_apply_chat_template_with_masking` handler (batched:
   render, tokenize the batch, label assistant spans) vs TRL's per-example
   `_tokenize(..., return_assistant_tokens_mask=True)` on the same template with
   `{% generation %}` markers (TRL needs them), labels from the mask. Three data sets: the
   shipped chat rows (short), and conversations of 8 and 32 user/assistant exchanges built
   from them (about 450 and 1,800 tokens);
2. the whole preparation a user waits for: our `prepare_datasets` on a data config (file
   loading, handlers, zero-label check, stats, mask audit included) vs TRL's own
   `SFTTrainer._prepare_dataset` (tokenize, build labels, truncate, filter) after
   `datasets.load_dataset("json", ...)` of the same file, as a TRL user would run it.
The tokenizer runs with its defaults (TOKENIZERS_PARALLELISM unset), as in a training job.
Each timing is the best of BENCH_REPEATS (5) runs, ours and TRL alternating so both see the
same machine load. Prints samples/s, ratios, label agreement and the machine; appends to
bench/results.jsonl.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
GENERATION_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def load_rows(copies: int) -> list[dict]:
    lines = (REPO / "data_configs" / "data" / "chat.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines] * copies


def long_rows(exchanges: int, count: int, seed: int = 0) -> list[dict]:
    """Multi-turn conversations: `exchanges` user/assistant pairs drawn from the shipped rows."""
    import random

    base = load_rows(1)
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        messages = []
        for row in rng.sample(base, exchanges):
            messages += [m for m in row["messages"] if m["role"] != "system"]
        rows.append({"messages": messages})
    return rows


def run_ours(dataset, tokenizer):
    from tuning.data.config.schema import HandlerArguments
    from tuning.data.handlers.apply import apply_handler, bind_handler
    from tuning.data.pipeline import handler_context

    bound = bind_handler(
        "tokenize_and_apply_chat_template_with_masking",
        HandlerArguments(
            batched=True, remove_columns="all", fn_kwargs={"conversation_column": "messages"}
        ),
        "bench",
    )
    ctx = handler_context(tokenizer, 4096, tokenizer.chat_template, "bench")
    return apply_handler(dataset, bound, ctx)


def run_trl(dataset, tokenizer):
    from trl.trainer.sft_trainer import _tokenize

    def tokenize_fn(example):
        out = _tokenize(
            tokenizer, example["messages"], chat_template=GENERATION_TEMPLATE,
            return_assistant_tokens_mask=True,
        )  # fmt: skip
        ids, mask = out["input_ids"], out["assistant_masks"]
        return {
            "input_ids": ids,
            "labels": [t if m else -100 for t, m in zip(ids, mask, strict=True)],
        }

    return dataset.map(tokenize_fn, remove_columns=dataset.column_names)


def run_ours_pipeline(rows_file: Path, tokenizer, workdir: Path):
    from tuning.config.schema import DataArgs
    from tuning.data.pipeline import prepare_datasets
    from tuning.data.plan import plan_data

    workdir = Path(tempfile.mkdtemp(dir=workdir))  # fresh cache each run: nothing reused
    config = workdir / "chat.yaml"
    config.write_text(
        "datasets:\n  - name: chat\n    data_paths: [" + str(rows_file) + "]\n"
        "    data_handlers:\n      - name: tokenize_and_apply_chat_template_with_masking\n"
        "        arguments:\n          remove_columns: all\n"
    )
    data = prepare_datasets(
        plan_data(DataArgs(data_config_path=str(config))),
        tokenizer,
        4096,
        cache_dir=str(workdir / "cache"),
    )
    return data.train


def run_trl_pipeline(rows_file: Path, tokenizer, workdir: Path):
    import types

    import datasets

    workdir = Path(tempfile.mkdtemp(dir=workdir))  # fresh cache each run: nothing reused
    dataset = datasets.load_dataset(
        "json", data_files=str(rows_file), split="train", cache_dir=str(workdir / "trl-cache")
    )
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir="/tmp/bench-trl", assistant_only_loss=True, max_length=4096,
        report_to="none", use_cpu=True, bf16=False,
    )  # fmt: skip
    trainer_state = types.SimpleNamespace(
        _tokenizer=tokenizer, chat_template=GENERATION_TEMPLATE,
        completion_only_loss=False, _is_vision_dataset=False,
    )  # fmt: skip
    return SFTTrainer._prepare_dataset(
        trainer_state, dataset, tokenizer, args, False, None, "train"
    )


def timed_pair(ours, theirs, *args, repeats: int = REPEATS):
    """Best of `repeats` runs of each, alternating, so both see the same machine load."""
    best = [float("inf"), float("inf")]
    results = [None, None]
    for _ in range(repeats):
        for side, fn in enumerate((ours, theirs)):
            start = time.perf_counter()
            results[side] = fn(*args)
            best[side] = min(best[side], time.perf_counter() - start)
    return results[0], best[0], results[1], best[1]


def identical(a, b) -> int:
    return sum(
        x["input_ids"] == y["input_ids"] and x["labels"] == y["labels"]
        for x, y in zip(a, b, strict=True)
    )


def main() -> int:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(str(REPO / "artifacts" / "tiny-llama"))
    tokenizer.model_max_length = 1 << 20  # the long sets exceed the tiny model's 2048 on purpose
    machine = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    record: dict = {"bench": "preprocess_chat_masking", "machine": machine, "repeats": REPEATS}
    workdir = Path(tempfile.mkdtemp())

    sets = {
        "shipped chat rows x20": load_rows(copies=20),
        "8 exchanges per conversation": long_rows(8, 1000),
        "32 exchanges per conversation": long_rows(32, 250),
    }
    for label, rows in sets.items():
        dataset = datasets.Dataset.from_list(rows)
        n = len(dataset)
        run_ours(dataset.select(range(20)), tokenizer)  # warm-up (imports, template compile)
        run_trl(dataset.select(range(20)), tokenizer)
        ours, ours_s, trl, trl_s = timed_pair(run_ours, run_trl, dataset, tokenizer)
        tokens = sum(len(ids) for ids in ours["input_ids"]) / n
        same = identical(ours, trl)
        print(
            f"masking step, {label} ({n} rows, {tokens:.0f} tokens each): tuneforge "
            f"{n / ours_s:8.1f}/s   TRL {n / trl_s:8.1f}/s   ratio {trl_s / ours_s:.2f}x   "
            f"identical labels {same}/{n}"
        )
        record[f"step: {label}"] = {
            "rows": n, "tokens_per_row": tokens, "ours_per_s": n / ours_s,
            "trl_per_s": n / trl_s, "ratio": trl_s / ours_s, "identical": same,
        }  # fmt: skip

    rows = sets["shipped chat rows x20"]
    rows_file = workdir / "chat.jsonl"
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ours_p, ours_p_s, trl_p, trl_p_s = timed_pair(
        run_ours_pipeline, run_trl_pipeline, rows_file, tokenizer, workdir
    )
    n = len(rows)
    same = identical(ours_p, trl_p)
    print(
        f"whole prepare, shipped chat rows x20 ({n} rows): tuneforge {n / ours_p_s:8.1f}/s   "
        f"TRL {n / trl_p_s:8.1f}/s   ratio {trl_p_s / ours_p_s:.2f}x   identical labels {same}/{n}"
    )
    record["prepare: shipped chat rows x20"] = {
        "rows": n, "ours_per_s": n / ours_p_s, "trl_per_s": n / trl_p_s,
        "ratio": trl_p_s / ours_p_s, "identical": same,
    }  # fmt: skip
    print(f"machine: {machine}; each timing the best of {REPEATS}, ours and TRL alternating")
    with open(REPO / "bench" / "results.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
