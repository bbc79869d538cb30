"""LoRA with added tokens: the resized embedding and head travel with the adapter, so base +
adapter loads back and gives the run's logits on a prompt with the new token; fms's
added_tokens_info.json is written."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
NEW = "<|newtok|>"


def _reload(base_dir, adapter_dir, added: int):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.resize_token_embeddings(base.get_input_embeddings().weight.shape[0] + added)
    return PeftModel.from_pretrained(base, adapter_dir).eval(), tokenizer


def test_lora_with_a_new_token_loads_back_with_the_same_logits(
    run_tuner, data_dir, fast_flags, tiny_model_dir, tmp_path
):
    save = tmp_path / "out" / "final"
    code, out = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"),
        "--peft_method", "lora", "--target_modules", "q_proj", "v_proj",
        "--add_special_tokens", NEW, "--embedding_size_multiple_of", "8",
        *fast_flags, "--save_model_dir", str(save), "--save_strategy", "steps", "--save_steps", "3",
    )  # fmt: skip
    assert code == 0
    base_rows = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"].shape[
        0
    ]
    for folder in (out, save):
        info = json.loads((folder / "added_tokens_info.json").read_text())
        assert info["num_new_tokens"] > 0 and (base_rows + info["num_new_tokens"]) % 8 == 0
    saved = load_file(save / "adapter_model.safetensors")
    embeddings = [k for k in saved if "embed_tokens" in k]
    assert embeddings and saved[embeddings[0]].shape[0] == base_rows + info["num_new_tokens"]
    added = info["num_new_tokens"]
    final, tokenizer = _reload(tiny_model_dir, save, added)
    checkpoint, _ = _reload(tiny_model_dir, out / "checkpoint-3", added)
    ids = tokenizer(f"Add 1 and 2. {NEW} 3", return_tensors="pt")["input_ids"]
    new_id = tokenizer.convert_tokens_to_ids(NEW)
    assert new_id >= base_rows and new_id in ids[0].tolist()
    with torch.no_grad():
        logits = final(input_ids=ids).logits
        again = checkpoint(input_ids=ids).logits
    assert torch.equal(logits, again)  # the final save and the run's last checkpoint agree
    row = final.get_input_embeddings().weight[new_id]
    assert torch.equal(row, saved[embeddings[0]][new_id])
