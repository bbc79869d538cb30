"""Tests for scripts/make_tiny_artifacts.py.

Why: every other test and the demo rely on the tiny tokenizer/model and the
committed sample data; they must be reproducible byte for byte and behave
like a real chat model (single-id special tokens, exact offsets, template).
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "make_tiny_artifacts.py"
COMMITTED_DATA = REPO_ROOT / "data_configs" / "data"
SPECIAL_TOKENS = [
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]


def _load_script() -> ModuleType:
    """Import the script by path: scripts/ is not a package."""
    spec = importlib.util.spec_from_file_location("make_tiny_artifacts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def mta() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def built_root(mta: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama/, tiny-gpt-oss/ and tiny-gpt-oss-reference.safetensors, built in-process."""
    root = tmp_path_factory.mktemp("tiny-a")
    tokenizer = mta.build_artifacts(root / "tiny-llama")
    mta.build_gpt_oss_artifacts(root / "tiny-gpt-oss", tokenizer)
    return root


@pytest.fixture(scope="module")
def built(built_root: Path) -> Path:
    return built_root / "tiny-llama"


@pytest.fixture(scope="module")
def built_gpt_oss(built_root: Path) -> Path:
    return built_root / "tiny-gpt-oss"


def test_build_is_byte_identical(built_root: Path, tmp_path: Path) -> None:
    # A second, separate process: Rust hash seeds differ, so this catches
    # any nondeterminism in BPE training, not just in-process repeatability.
    out = tmp_path / "tiny-b"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out",
            str(out / "tiny-llama"),
            "--gpt-oss-out",
            str(out / "tiny-gpt-oss"),
        ],
        check=True,
    )
    first, second = _digests(built_root), _digests(out)
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert {f"tiny-llama/{name}" for name in expected} <= set(first)
    assert {f"tiny-gpt-oss/{name}" for name in expected} <= set(first)
    assert "tiny-gpt-oss-reference.safetensors" in first
    assert first == second


def test_tokenizer_specials_offsets_and_template(built: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    for token in SPECIAL_TOKENS:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] == tok.convert_tokens_to_ids(token), token
        # embedded in text it must not be split either
        assert ids[0] in tok(f"a{token}b")["input_ids"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    assert len({tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}) == len(SPECIAL_TOKENS)
    # plain tokenization adds no bos/eos
    ids = tok("abc")["input_ids"]
    assert not set(ids) & set(tok.all_special_ids)
    assert tok.decode(ids) == "abc"

    for text in [
        "Hello world\n\n### Response: complaint",
        "Un café crème, s'il vous plaît.\nRésumé  naïve\t«Zürich» — 5€\n",
        "  leading spaces<|user|>\nWhat is 2 + 2?<|end|>\n",
    ]:
        enc = tok(text, return_offsets_mapping=True)
        assert "".join(text[s:e] for s, e in enc["offset_mapping"]) == text
        assert tok.decode(enc["input_ids"]) == text

    messages = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == "<s><|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\n2 + 2 = 4.<|end|>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\n"
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<|user|>")]
    assert "{% generation %}" not in tok.chat_template


def test_model_matches_tokenizer(built: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    assert model.config.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert model.dtype == torch.float32
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert sum(p.stat().st_size for p in built.iterdir()) < 2 * 1024 * 1024
    with torch.no_grad():
        logits = model(torch.tensor([tok("Add 3 and 4.")["input_ids"]])).logits
    assert logits.shape[-1] == len(tok)


def test_datasets_load_and_match_committed(mta: ModuleType, built: Path, tmp_path: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    data_dir = tmp_path / "data"
    written = mta.write_datasets(data_dir, tok)
    assert sum(p.stat().st_size for p in written) < 1024 * 1024

    cache = str(tmp_path / "hf-cache")
    reference = datasets.load_dataset(
        "json", data_files=str(data_dir / "input_output.jsonl"), split="train", cache_dir=cache
    ).to_list()
    for builder, files in [
        ("arrow", "input_output.arrow"),
        ("csv", "input_output.csv"),
        ("json", "input_output.json"),
        ("json", "shards/*.jsonl"),
    ]:
        ds = datasets.load_dataset(
            builder, data_files=str(data_dir / files), split="train", cache_dir=cache
        )
        assert ds.to_list() == reference, files

    pretok = datasets.load_dataset(
        "parquet", data_files=str(data_dir / "pretokenized.parquet"), split="train", cache_dir=cache
    )
    row, source = pretok[0], reference[0]
    n_prompt = len(tok(source["input"], add_special_tokens=False)["input_ids"])
    assert row["input_ids"][-1] == tok.eos_token_id
    assert row["labels"][:n_prompt] == [-100] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]

    # The committed sample data must be exactly what the script generates.
    if not (COMMITTED_DATA / "input_output.jsonl").exists():
        pytest.skip("sample data not generated in this checkout")
    committed = _digests(COMMITTED_DATA)
    for name, digest in _digests(data_dir).items():
        assert committed.get(name) == digest, f"{name} is stale: rerun the script with --datasets"


# --------------------------------------------------------------------------
# tiny-gpt-oss: harmony tokenizer, MXFP4 checkpoint
# --------------------------------------------------------------------------

HARMONY = ["<|start|>", "<|return|>", "<|channel|>", "<|message|>"]


def _e2m1(code: int) -> float:
    """FP4 E2M1 from its bits (sign, 2 exponent bits with bias 1, 1 mantissa bit)."""
    sign = -1.0 if code & 0b1000 else 1.0
    exponent, mantissa = (code >> 1) & 0b11, code & 0b1
    if exponent == 0:  # subnormal: 0 or 0.5
        return sign * 0.5 * mantissa
    return sign * 2.0 ** (exponent - 1) * (1 + 0.5 * mantissa)


def decode_mxfp4(blocks, scales):
    """blocks [..., G, 16] uint8 + scales [..., G] uint8 (E8M0) -> values [..., G * 32]."""
    import numpy as np

    table = np.array([_e2m1(code) for code in range(16)])
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = table[codes] * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return values.reshape(*blocks.shape[:-2], -1)


def test_mxfp4_quantizer_rounds_to_nearest_e2m1(mta: ModuleType) -> None:
    import numpy as np

    assert [abs(_e2m1(c)) for c in range(8)] == list(mta.FP4_E2M1)
    # the scale is the smallest power of two that clips nothing: amax 6 -> 2**0, 3 -> 2**-1,
    # 6.001 -> 2**1, 0.75 -> 2**-3; an all-zero block gets the smallest scale byte
    rows = np.zeros((5, 32))
    rows[0, 0], rows[1, 0], rows[2, 0], rows[3, 0] = 6.0, 3.0, 6.001, -0.75
    blocks, scales = mta.quantize_mxfp4(rows)
    assert blocks.shape == (5, 1, 16) and scales.shape == (5, 1)
    assert blocks.dtype == scales.dtype == np.uint8
    assert scales[:, 0].tolist() == [127, 126, 128, 124, 0]
    assert blocks.flags.c_contiguous and scales.flags.c_contiguous

    # with scale 1: grid values are exact, midpoints go to the even code, signs are kept
    values = [6.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    values += [-0.5, -6.0, -0.1, 0.2, 4.9, 5.1, 0.3]
    values += [0.0] * (32 - len(values))
    blocks, scales = mta.quantize_mxfp4(np.array([values]))
    assert scales[0, 0] == 127
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(-1)  # low nibble first
    assert codes[:22].tolist() == [
        7, 0, 1, 2, 3, 4, 5, 6,  # exact
        0, 2, 2, 4, 4, 6, 6,  # ties to even: 0.25->0, 0.75->1.0, ..., 5->4
        9, 15, 8, 0, 6, 7, 1,  # -0.5, -6, -0.1 -> -0, 0.2 -> 0, 4.9 -> 4, 5.1 -> 6, 0.3 -> 0.5
    ]  # fmt: skip
    decoded = decode_mxfp4(blocks, scales)[0]
    assert decoded[:8].tolist() == values[:8]

    # random weights: every value decodes to the nearest point of its block's grid
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.02, size=(3, 4, 64)).astype(np.float32)
    blocks, scales = mta.quantize_mxfp4(weights)
    _assert_nearest_on_grid(weights.astype(np.float64), decode_mxfp4(blocks, scales), scales)

    with pytest.raises(ValueError, match="multiple of 32"):
        mta.quantize_mxfp4(np.zeros((2, 48)))


def _assert_nearest_on_grid(weights, decoded, scales) -> None:
    """decoded == round-to-nearest of weights on each 32-block's E2M1 grid (scale 2**(s-127)),
    and that scale is the smallest power of two that clips nothing."""
    import numpy as np

    scale = np.repeat(np.exp2(scales.astype(np.float64) - 127), 32, axis=-1)
    grid = np.array([_e2m1(code) for code in range(16)])
    candidates = grid[None, :] * scale.reshape(-1, 1)
    distance = np.abs(weights.reshape(-1, 1) - candidates).min(axis=1)
    assert np.array_equal(np.abs(weights - decoded).reshape(-1), distance)
    amax = np.abs(weights).reshape(*scales.shape, 32).max(axis=-1)
    smallest = np.exp2(scales.astype(np.float64) - 127)
    assert (amax <= 6 * smallest).all() and ((amax > 3 * smallest) | (amax == 0)).all()


def test_gpt_oss_tokenizer_and_harmony_template(built: Path, built_gpt_oss: Path) -> None:
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(built)
    tok = AutoTokenizer.from_pretrained(built_gpt_oss)
    # the same BPE with the same ids, plus harmony's delimiters as single special tokens
    assert base.get_vocab().items() <= tok.get_vocab().items()
    assert [tok.convert_tokens_to_ids(t) for t in HARMONY] == [1000, 1001, 1002, 1003]
    assert len(tok) == 1004
    for token in [*HARMONY, "<|end|>"]:
        assert tok(f"a{token}b", add_special_tokens=False)["input_ids"][1] == (
            tok.convert_tokens_to_ids(token)
        )
    assert (tok.eos_token, tok.pad_token, tok.model_max_length) == ("<|return|>", "<pad>", 4096)

    conversation = [
        {"role": "system", "content": "reasoning language: French"},
        {"role": "user", "content": "Combien font 6 fois 7 ?"},
        {"role": "assistant", "thinking": "6 * 7 = 42.", "content": "42."},
    ]
    assert tok.apply_chat_template(conversation, tokenize=False) == (
        "<|start|>system<|message|>reasoning language: French<|end|>"
        "<|start|>user<|message|>Combien font 6 fois 7 ?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>6 * 7 = 42.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>42.<|return|>"
    )
    two_turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "thinking": None},
        {"role": "user", "content": "2 + 2?"},
    ]
    assert tok.apply_chat_template(two_turns, tokenize=False, add_generation_prompt=True) == (
        "<|start|>user<|message|>Hi<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello.<|end|>"
        "<|start|>user<|message|>2 + 2?<|end|><|start|>assistant"
    )
    assert "{% generation %}" in tok.chat_template  # thinking is trained with the answer


def test_gpt_oss_checkpoint_is_stored_like_gpt_oss(mta: ModuleType, built_gpt_oss: Path) -> None:
    import json

    import numpy as np
    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file as load_pt

    config = json.loads((built_gpt_oss / "config.json").read_text())
    assert config["model_type"] == "gpt_oss" and config["architectures"] == ["GptOssForCausalLM"]
    assert config["quantization_config"] == {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    }
    hidden, inter, experts = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_local_experts"],
    )
    assert hidden % 32 == 0 and inter % 32 == 0 and hidden != inter
    assert (experts, config["num_experts_per_tok"], config["num_hidden_layers"]) == (4, 2, 2)
    assert config["layer_types"] == ["sliding_attention", "full_attention"]
    assert config["vocab_size"] == 1004 and config["dtype"] == "bfloat16"

    tensors = load_pt(str(built_gpt_oss / "model.safetensors"))
    raw = {k: v.numpy() for k, v in tensors.items() if k.endswith(("_blocks", "_scales"))}
    reference = load_np(str(mta.reference_path(built_gpt_oss)))
    shapes = {
        "gate_up_proj": ((experts, 2 * inter, hidden // 32, 16), (experts, hidden, 2 * inter)),
        "down_proj": ((experts, hidden, inter // 32, 16), (experts, inter, hidden)),
    }
    expected_reference = set()
    for layer in range(2):
        prefix = f"model.layers.{layer}.mlp.experts."
        for proj, (block_shape, weight_shape) in shapes.items():
            blocks, scales = raw[f"{prefix}{proj}_blocks"], raw[f"{prefix}{proj}_scales"]
            assert blocks.dtype == scales.dtype == np.uint8
            assert blocks.shape == block_shape and scales.shape == block_shape[:-1]
            assert f"{prefix}{proj}" not in tensors  # only the packed form, as gpt-oss has it
            bias = tensors[f"{prefix}{proj}_bias"]
            assert bias.shape == (experts, block_shape[1]) and bias.abs().sum() > 0
            weight = reference[f"{prefix}{proj}"]
            assert weight.dtype == np.float32 and weight.shape == weight_shape
            expected_reference.add(f"{prefix}{proj}")
            # stored [E, out, in]: the model's [E, in, out] transposed, quantized along `in`
            transposed = weight.transpose(0, 2, 1).astype(np.float64)
            _assert_nearest_on_grid(transposed, decode_mxfp4(blocks, scales), scales)
    assert set(reference) == expected_reference
    unquantized = {k: v for k, v in tensors.items() if not k.endswith(("_blocks", "_scales"))}
    assert {str(v.dtype) for v in unquantized.values()} == {"torch.bfloat16"}
    assert "model.layers.0.self_attn.sinks" in unquantized and "lm_head.weight" in unquantized
    size = sum(p.stat().st_size for p in built_gpt_oss.iterdir())
    assert size + mta.reference_path(built_gpt_oss).stat().st_size < 5 * 1024 * 1024
