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
def built(mta: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-a")
    mta.build_artifacts(out)
    return out


def test_build_is_byte_identical(built: Path, tmp_path: Path) -> None:
    # A second, separate process: Rust hash seeds differ, so this catches
    # any nondeterminism in BPE training, not just in-process repeatability.
    out = tmp_path / "tiny-b"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True)
    first, second = _digests(built), _digests(out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        first
    )
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
