"""Chat-masking preprocessing throughput: tuneforge's handler vs TRL's own per-example path.

Two comparisons over the same conversations, one process, side by side in one run:
1. the masking step alone: our `tokenize_and_apply_chat_template_with_masking` handler (batched:
   render, tokenize the batch with offsets, label assistant spans) vs TRL's per-example
   `_tokenize(..., return_assistant_tokens_mask=True)` on the same template with
   `{% generation %}` markers (TRL needs them), labels from the mask;
2. the whole preparation a user waits for: our `prepare_datasets` on a data config (file
   loading, handlers, zero-label check, stats, mask audit included) vs TRL's own
   `SFTTrainer._prepare_dataset` (tokenize, build labels, truncate, filter) after
   `datasets.load_dataset("json", ...)` of the same file, as a TRL user would run it.
The tokenizer runs with its defaults (TOKENIZERS_PARALLELISM unset), as in a training job.
Each timing is the best of 3 runs (fresh caches). Prints samples/s, ratios, label agreement
and the machine; appends to bench/results.jsonl.
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

BATCH = int(os.environ.get("BENCH_BATCH", "1000"))
GENERATION_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def load_rows(copies: int) -> list[dict]:
    lines = (REPO / "data_configs" / "data" / "chat.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines] * copies


def run_ours(dataset, tokenizer):
    from tuning.data.config_schema import HandlerArguments
    from tuning.data.handlers.registry import apply_handler, bind_handler
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

    workdir = Path(tempfile.mkdtemp(dir=workdir))  # fresh cache each run: nothing reused
    config = workdir / "chat.yaml"
    config.write_text(
        "datasets:\n  - name: chat\n    data_paths: [" + str(rows_file) + "]\n"
        "    data_handlers:\n      - name: tokenize_and_apply_chat_template_with_masking\n"
        "        arguments:\n          remove_columns: all\n"
    )
    data = prepare_datasets(
        DataArgs(data_config_path=str(config)), tokenizer, 4096, cache_dir=str(workdir / "cache")
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


def timed(fn, *args, repeats: int = 3):
    """Best of `repeats` runs (the least disturbed by other work on the machine)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


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
    rows = load_rows(copies=20)
    dataset = datasets.Dataset.from_list(rows)
    n = len(dataset)
    workdir = Path(tempfile.mkdtemp())
    rows_file = workdir / "chat.jsonl"
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_ours(dataset.select(range(50)), tokenizer)  # warm-up (imports, template compile)
    run_trl(dataset.select(range(50)), tokenizer)
    ours, ours_s = timed(run_ours, dataset, tokenizer)
    trl, trl_s = timed(run_trl, dataset, tokenizer)
    ours_p, ours_p_s = timed(run_ours_pipeline, rows_file, tokenizer, workdir)
    trl_p, trl_p_s = timed(run_trl_pipeline, rows_file, tokenizer, workdir)
    machine = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    step_ratio, pipeline_ratio = trl_s / ours_s, trl_p_s / ours_p_s
    print(f"conversations: {n}")
    print(
        f"masking step  - tuneforge {n / ours_s:8.1f}/s   TRL {n / trl_s:8.1f}/s   "
        f"ratio {step_ratio:.2f}x   identical labels {identical(ours, trl)}/{n}"
    )
    print(
        f"whole prepare - tuneforge {n / ours_p_s:8.1f}/s   TRL {n / trl_p_s:8.1f}/s   "
        f"ratio {pipeline_ratio:.2f}x   identical labels {identical(ours_p, trl_p)}/{n}"
    )
    print(f"machine: {machine}")
    with open(REPO / "bench" / "results.jsonl", "a") as handle:
        record = {"bench": "preprocess_chat_masking", "machine": machine, "samples": n,
                  "step": {"ours_per_s": n / ours_s, "trl_per_s": n / trl_s, "ratio": step_ratio},
                  "prepare": {"ours_per_s": n / ours_p_s, "trl_per_s": n / trl_p_s,
                              "ratio": pipeline_ratio}}  # fmt: skip
        handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
