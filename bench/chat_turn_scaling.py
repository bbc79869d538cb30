"""Chat masking cost vs. number of turns: ours (render once) vs the per-turn prefix method.

Prints, per conversation length, the time per conversation of each method, and the growth factor
from 10 to 80 turns (linear ~8x; quadratic ~64x). Appends a record to bench/results.jsonl.
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


def conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You answer arithmetic questions."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"What is {i} + {i + 1}?"})
        messages.append({"role": "assistant", "content": f"{i} + {i + 1} = {2 * i + 1}."})
    return messages


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    from transformers import AutoTokenizer

    from tuning.data.labels.chat import assistant_spans, spans_by_prefix, special_tokens_of

    tokenizer = AutoTokenizer.from_pretrained(str(REPO / "artifacts" / "tiny-llama"))
    template, special = tokenizer.chat_template, special_tokens_of(tokenizer)
    rows = []
    for turns in (10, 20, 40, 80):
        messages = conversation(turns)
        ours = best_of(lambda m=messages: assistant_spans(template, m, special))
        prefix = best_of(lambda m=messages: spans_by_prefix(template, m, special), repeats=2)
        assert (
            assistant_spans(template, messages, special)[1]
            == spans_by_prefix(template, messages, special)[1]
        )
        rows.append({"turns": turns, "ours_ms": ours * 1e3, "prefix_ms": prefix * 1e3})
        print(
            f"{turns:3d} turns: ours {ours * 1e3:8.2f} ms  per-turn prefix {prefix * 1e3:9.2f} ms  "
            f"ratio {prefix / ours:6.1f}x"
        )
    growth_ours = rows[-1]["ours_ms"] / rows[0]["ours_ms"]
    growth_prefix = rows[-1]["prefix_ms"] / rows[0]["prefix_ms"]
    machine = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    print(
        f"10 -> 80 turns growth: ours {growth_ours:.1f}x (linear = 8x), prefix {growth_prefix:.1f}x"
    )
    print(f"machine: {machine}")
    record = {
        "bench": "chat_turn_scaling",
        "machine": machine,
        "rows": rows,
        "growth_ours": growth_ours,
        "growth_prefix": growth_prefix,
    }
    with open(REPO / "bench" / "results.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
