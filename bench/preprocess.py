"""Chat-masking preprocessing throughput: tuneforge's handler vs TRL's own per-example path.

Both run over the same conversations with datasets.map on one process:
- ours: `tokenize_and_apply_chat_template_with_masking` (batched: render each conversation
  once, tokenize the batch with offsets, label assistant spans);
- TRL: `trl.trainer.sft_trainer._tokenize` per example with `return_assistant_tokens_mask=True`
  (what SFTTrainer runs with assistant_only_loss), on the same template with `{% generation %}`
  markers, then labels from the assistant mask as SFTTrainer builds them.
Prints samples/s of each, the ratio, the label agreement, the machine; appends to results.jsonl.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
    from tuning.data.pipeline import _context

    bound = bind_handler(
        "tokenize_and_apply_chat_template_with_masking",
        HandlerArguments(
            batched=True, remove_columns="all", fn_kwargs={"conversation_column": "messages"}
        ),
        "bench",
    )
    ctx = _context(tokenizer, 4096, tokenizer.chat_template, "bench")
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


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> int:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(str(REPO / "artifacts" / "tiny-llama"))
    dataset = datasets.Dataset.from_list(load_rows(copies=20))
    run_ours(dataset.select(range(50)), tokenizer)  # warm-up (imports, template compile)
    run_trl(dataset.select(range(50)), tokenizer)
    ours, ours_s = timed(run_ours, dataset, tokenizer)
    trl, trl_s = timed(run_trl, dataset, tokenizer)
    n = len(dataset)
    agree = sum(
        a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
        for a, b in zip(ours, trl, strict=True)
    )
    machine = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    ratio = (n / ours_s) / (n / trl_s)
    print(f"conversations: {n}")
    print(f"tuneforge handler : {n / ours_s:9.1f} samples/s ({ours_s:.2f} s)")
    print(f"TRL per-example   : {n / trl_s:9.1f} samples/s ({trl_s:.2f} s)")
    print(f"ratio (ours / TRL): {ratio:.2f}x   identical labels: {agree}/{n}")
    print(f"machine: {machine}")
    with open(REPO / "bench" / "results.jsonl", "a") as handle:
        record = {"bench": "preprocess_chat_masking", "machine": machine, "samples": n,
                  "ours_per_s": n / ours_s, "trl_per_s": n / trl_s, "ratio": ratio,
                  "identical_labels": agree}  # fmt: skip
        handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
