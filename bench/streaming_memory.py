"""Peak memory of streamed preprocessing when the data grows tenfold (and, for contrast, in memory).

Each measurement runs in a fresh process: it writes N input/output rows to a JSONL file, runs the
`streaming.yaml`-style handler chain through tuning.data.pipeline.prepare_datasets, consumes
every row, and reports ru_maxrss. Prints ratios 10x/1x for streaming and in-memory modes.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_ROWS = 20_000


def child(rows: int, streaming: bool) -> None:
    sys.path.insert(0, str(REPO))
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets
    from transformers import AutoTokenizer

    from tuning.config.schema import DataArgs
    from tuning.data.pipeline import prepare_datasets
    from tuning.data.plan import plan_data

    datasets.disable_progress_bars()
    folder = Path(tempfile.mkdtemp())
    data = folder / "rows.jsonl"
    with open(data, "w") as handle:
        for i in range(rows):
            handle.write(
                json.dumps({"input": f"Add {i} and {i + 7}.", "output": f" {2 * i + 7}"}) + "\n"
            )
    config = folder / "config.yaml"
    config.write_text(
        "dataprocessor:\n  streaming: " + ("true" if streaming else "false") + "\n"
        "datasets:\n  - name: rows\n    data_paths: [rows.jsonl]\n    data_handlers:\n"
        "      - name: tokenize_and_apply_input_masking\n        arguments:\n"
        "          remove_columns: all\n          batched: true\n          fn_kwargs:\n"
        "            input_column_name: input\n            output_column_name: output\n"
    )
    tokenizer = AutoTokenizer.from_pretrained(str(REPO / "artifacts" / "tiny-llama"))
    prepared = prepare_datasets(
        plan_data(DataArgs(data_config_path=str(config))), tokenizer, 128,
        cache_dir=str(folder / "cache"),
    )  # fmt: skip
    tokens = sum(len(row["input_ids"]) for row in prepared.train)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "streaming": streaming, "tokens": tokens, "peak_mb": peak_mb}))


def measure(rows: int, streaming: bool) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(rows), str(int(streaming))],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), bool(int(sys.argv[3])))
        return 0
    machine = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    results = {}
    for streaming in (True, False):
        small, large = measure(BASE_ROWS, streaming), measure(10 * BASE_ROWS, streaming)
        label = "streaming" if streaming else "in-memory"
        results[label] = (small, large)
        print(
            f"{label:9s}: {small['rows']:>7} rows {small['peak_mb']:7.1f} MB | "
            f"{large['rows']:>7} rows {large['peak_mb']:7.1f} MB | "
            f"10x data -> {large['peak_mb'] / small['peak_mb']:.2f}x peak memory"
        )
    print(f"machine: {machine}")
    with open(REPO / "bench" / "results.jsonl", "a") as handle:
        handle.write(json.dumps({"bench": "streaming_memory", "machine": machine,
                                 "results": results}) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
