"""`make demo`: a real training run on the bundled tiny model and a shipped data config.

It runs exactly the command a user would type, then says where the tuned model is.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo_output"


def sample_answer(model_dir: Path, question: str = "What is 13 + 14?") -> str:
    """Greedy answer of the tuned model: it should use the trained format and stop at <|end|>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(
        **inputs,
        max_new_tokens=24,
        do_sample=False,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|end|>"),
    )
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    command = [
        sys.executable, "-m", "tuning.sft_trainer",
        "--model_name_or_path", "artifacts/tiny-llama",
        "--data_config", "data_configs/chat_assistant_only.yaml",
        "--output_dir", str(OUT.relative_to(REPO)),
        "--save_model_dir", str((OUT / "model").relative_to(REPO)),
        "--num_train_epochs", "3",
        "--per_device_train_batch_size", "8",
        "--learning_rate", "3e-3",
        "--lr_scheduler_type", "cosine",
        "--warmup_ratio", "0.1",
        "--logging_strategy", "steps",
        "--logging_steps", "10",
        "--save_strategy", "epoch",
        "--save_total_limit", "1",
        "--max_seq_length", "256",
        "--torch_dtype", "float32",
    ]  # fmt: skip
    print("$", shlex.join(command[1:]).replace(sys.executable, "python"), flush=True)
    result = subprocess.run(command, cwd=REPO)
    if result.returncode != 0:
        return result.returncode
    losses = [
        json.loads(line)["data"]["value"]
        for line in (OUT / "training_logs.jsonl").read_text().splitlines()
    ]
    print(f"\ntraining loss: first {losses[0]:.3f} -> last {losses[-1]:.3f} ({len(losses)} logs)")
    print(f"tuned model saved to: {OUT / 'model'}")
    print(f"tuned model answers: {sample_answer(OUT / 'model')!r}")
    print(f"training logs: {OUT / 'training_logs.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
