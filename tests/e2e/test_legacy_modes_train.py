"""Real training on the tiny model for each fms legacy data mode (no data config)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _weights_changed(original_dir, tuned_dir) -> list[str]:
    before = load_file(str(original_dir / "model.safetensors"))
    after = load_file(str(tuned_dir / "model.safetensors"))
    assert before.keys() == after.keys()
    return [name for name in before if not (before[name] == after[name]).all()]


def _log_records(out):
    lines = (out / "training_logs.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    "mode_flags",
    [
        pytest.param(
            ["--training_data_path", "twitter_complaints.jsonl", "--dataset_text_field", "output",
             "--response_template", "\\n### Response:"],
            id="text-field+response-template",
        ),
        pytest.param(
            ["--training_data_path", "input_output.json", "--data_formatter_template",
             "### Input: {{input}} \\n\\n## Label: {{output}}", "--response_template", "\\n## Label:"],
            id="formatter-template",
        ),
        pytest.param(["--training_data_path", "input_output.jsonl"], id="input-output"),
        pytest.param(["--training_data_path", "chat.jsonl"], id="messages"),
        pytest.param(["--training_data_path", "pretokenized.parquet"], id="pretokenized"),
        pytest.param(["--training_data_path", "input_output.arrow"], id="arrow"),
        pytest.param(["--training_data_path", "input_output.csv"], id="csv"),
        pytest.param(["--training_data_path", "shards"], id="folder"),
    ],
)  # fmt: skip
def test_full_finetune_changes_weights_and_logs(
    run_tuner, fast_flags, tiny_model_dir, data_dir, tmp_path, mode_flags
):
    mode_flags = [str(data_dir / f) if i == 1 else f for i, f in enumerate(mode_flags)]
    save_dir = tmp_path / "final"
    code, out = run_tuner(*mode_flags, *fast_flags, "--save_model_dir", str(save_dir))
    assert code == 0
    changed = _weights_changed(tiny_model_dir, save_dir)
    assert "lm_head.weight" in changed and len(changed) > 5
    records = _log_records(out)
    assert [r["data"]["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert record["name"] == "training_loss"
        assert set(record["data"]) == {"epoch", "step", "timestamp", "value"}
        assert record["data"]["value"] > 0


def test_lora_saves_adapter_and_trains_it(run_tuner, fast_flags, data_dir, tmp_path):
    from safetensors.torch import load_file as load

    save_dir = tmp_path / "adapter"
    code, _ = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"),
        *fast_flags, "--peft_method", "lora", "--r", "4", "--lora_alpha", "8",
        "--target_modules", "q_proj", "v_proj", "--save_model_dir", str(save_dir),
    )  # fmt: skip
    assert code == 0
    names = {p.name for p in save_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "model.safetensors" not in names
    config = json.loads((save_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    weights = load(str(save_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it trained


def test_validation_data_is_evaluated(run_tuner, fast_flags, data_dir):
    code, out = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"),
        "--validation_data_path", str(data_dir / "input_output.json"),
        *fast_flags, "--eval_strategy", "steps", "--eval_steps", "3", "--per_device_eval_batch_size", "8",
    )  # fmt: skip
    assert code == 0
    names = [r["name"] for r in _log_records(out)]
    assert names.count("validation_loss") == 1


def test_enable_reduce_loss_sum_sums_over_tokens(run_tuner, fast_flags, data_dir, tmp_path):
    flags = ["--training_data_path", str(data_dir / "input_output.jsonl"), *fast_flags]
    _, mean_out = run_tuner(*flags, output_dir=tmp_path / "mean")
    code, sum_out = run_tuner(*flags, "--enable_reduce_loss_sum", output_dir=tmp_path / "sum")
    assert code == 0
    mean_first = _log_records(mean_out)[0]["data"]["value"]
    sum_first = _log_records(sum_out)[0]["data"]["value"]
    # Same data, same weights at step 1: the sum is the mean times the trained tokens (> 10 here).
    ratio = sum_first / mean_first
    assert ratio > 10 and abs(ratio - round(ratio)) < 0.05


def test_added_special_tokens_grow_the_embeddings(run_tuner, fast_flags, data_dir, tmp_path):
    from transformers import AutoTokenizer

    save = tmp_path / "model"
    code, _ = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"), *fast_flags,
        "--add_special_tokens", "<|tool|>", "<|think|>", "--embedding_size_multiple_of", "64",
        "--save_model_dir", str(save),
    )  # fmt: skip
    assert code == 0
    tokenizer = AutoTokenizer.from_pretrained(str(save))
    think = tokenizer.convert_tokens_to_ids("<|think|>")
    assert tokenizer("a<|think|>b", add_special_tokens=False)["input_ids"][1] == think
    config = json.loads((save / "config.json").read_text())
    assert config["vocab_size"] == 1024  # 1000 + 2 new tokens, rounded up to a multiple of 64
