"""PEFT methods train end to end: activated LoRA (peft's aLoRA) with its invocation string."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_alora_trains_from_the_invocation_tokens(
    run_tuner, data_dir, fast_flags, tiny_tokenizer, tmp_path
):
    from safetensors.torch import load_file

    code, out = run_tuner(
        "--training_data_path", str(data_dir / "chat.jsonl"),
        "--peft_method", "alora", "--alora_invocation_string", "<|assistant|>",
        "--target_modules", "q_proj", "v_proj", *fast_flags,
        "--save_model_dir", str(tmp_path / "out" / "adapter"),
    )  # fmt: skip
    assert code == 0
    saved = out / "adapter"
    config = json.loads((saved / "adapter_config.json").read_text())
    expected = tiny_tokenizer("<|assistant|>", add_special_tokens=False)["input_ids"]
    assert config["alora_invocation_tokens"] == expected
    weights = load_file(saved / "adapter_model.safetensors")
    b_matrices = [v for k, v in weights.items() if "lora_B" in k]
    assert b_matrices and any(v.abs().sum() > 0 for v in b_matrices)  # trained away from 0


def test_alora_invocation_missing_from_the_data_is_a_data_error(
    run_tuner, data_dir, fast_flags, capsys
):
    code, out = run_tuner(
        "--training_data_path", str(data_dir / "chat.jsonl"),
        "--peft_method", "alora", "--alora_invocation_string", "NEVER_SEEN_XYZ",
        "--target_modules", "q_proj", *fast_flags,
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "does not occur in 200 of 200 training samples" in err
    assert not (out / "run_summary.json").exists()


def test_lora_with_gradient_checkpointing_trains(run_tuner, data_dir, fast_flags, tmp_path):
    """transformers 5 checkpoints non-reentrantly and trl makes PEFT inputs require grads."""
    from safetensors.torch import load_file

    code, out = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"),
        "--peft_method", "lora", "--target_modules", "all-linear",
        "--gradient_checkpointing", "true", *fast_flags,
        "--save_model_dir", str(tmp_path / "out" / "adapter"),
    )  # fmt: skip
    assert code == 0
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)


def test_more_lora_fields_reach_peft(run_tuner, data_dir, fast_flags, tmp_path):
    """rank_pattern / alpha_pattern / lora_bias travel to peft's LoraConfig as given."""
    from safetensors.torch import load_file

    code, out = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"),
        "--peft_method", "lora", "--target_modules", "q_proj", "v_proj", "--r", "8",
        "--rank_pattern", '{"q_proj": 4}', "--alpha_pattern", '{"q_proj": 8}',
        "--lora_bias", "true", *fast_flags,
        "--save_model_dir", str(tmp_path / "out" / "adapter"),
    )  # fmt: skip
    assert code == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"q_proj": 4} and config["alpha_pattern"] == {"q_proj": 8}
    assert config["lora_bias"] is True
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    q = next(v for k, v in weights.items() if "q_proj.lora_A" in k)
    v = next(v for k, v in weights.items() if "v_proj.lora_A" in k)
    assert (q.shape[0], v.shape[0]) == (4, 8)
    assert any("lora_B" in k and k.endswith("bias") for k in weights)


@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [
        ("--kasa_config", '{"beta": 0.0001, "gamma": 0.001}', "kasa_config"),
        ("--use_bdlora", '{"nblocks": 2, "target_modules_bd_a": ["q_proj"], "target_modules_bd_b": ["v_proj"]}', "use_bdlora"),
    ],
)  # fmt: skip
def test_lora_variants_train_and_are_recorded(
    run_tuner, data_dir, fast_flags, tmp_path, flag, value, key
):
    code, out = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"),
        "--peft_method", "lora", "--target_modules", "q_proj", "v_proj", flag, value,
        *fast_flags, "--save_model_dir", str(tmp_path / "out" / "adapter"),
    )  # fmt: skip
    assert code == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert {k: config[key][k] for k in json.loads(value)} == json.loads(value)
