#!/usr/bin/env python
"""Build a tiny, deterministic tokenizer + Llama model and sample datasets.

Why: unit tests and CPU smoke runs of tuneforge need a real (but tiny) causal
LM, a fast tokenizer with a chat template and exact character offsets, and
small datasets in every supported file format -- all without touching the
Hugging Face Hub. Everything here is generated from fixed seeds, so running
the script twice produces byte-identical files that can be committed.

Artifacts (always built, default: artifacts/tiny-llama/):
  * byte-level BPE tokenizer (~1000 tokens) trained on a generated corpus,
    special tokens <s> </s> <pad> <unk> <|system|> <|user|> <|assistant|> <|end|>,
    chat template without {% generation %} markers, no automatic bos/eos;
  * LlamaForCausalLM (2 layers, hidden 64, float32, untied embeddings).

Datasets (only with --datasets, default: data_configs/data/):
  twitter_complaints.json/.jsonl   {"output": "### Input: ...\\n\\n### Response: ..."}
  input_output.json/.jsonl/.csv/.arrow (Arrow IPC stream)   {"input", "output"}
  chat.jsonl                       {"messages": [{"role", "content"}, ...]}
  pretokenized.parquet             {"input_ids", "labels"} (list<int64>)
  shards/part-0000{0,1,2}.jsonl    input/output rows split over three files
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Pin the Rust thread pool before `tokenizers` is imported (imports below are
# lazy) so BPE training cannot depend on thread scheduling.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "artifacts" / "tiny-llama"
DEFAULT_DATA_DIR = REPO_ROOT / "data_configs" / "data"

SEED = 42
VOCAB_SIZE = 1000
MODEL_MAX_LENGTH = 2048

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Order fixes the ids: <unk>=0, <s>=1, </s>=2, <pad>=3, roles 4..7.
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, *ROLE_TOKENS]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

Row = dict[str, Any]

# --------------------------------------------------------------------------
# Deterministic text generators (shared by the tokenizer corpus and datasets)
# --------------------------------------------------------------------------

COMPANIES = [
    "@SkyJet", "@QuickShip", "@MegaMart", "@NetFiber",
    "@BrightBank", "@CityRail", "@PhoneCo", "@CaféNoir",
]  # fmt: skip
ITEMS = [
    "laptop", "phone", "parcel", "ticket", "order", "headphones",
    "coffee machine", "suitcase", "router", "jacket", "café crème", "blender",
]  # fmt: skip

# Complaints always use negative wording (broken, refund, worst, ...), the
# others are thanks/questions/news, so the label is learnable from the text.
COMPLAINT_TEMPLATES = [
    "{co} my {item} arrived broken and nobody answers my emails",
    "{co} I have been on hold for {n} minutes, this is ridiculous",
    "still waiting for my refund from {co}, {n} days and counting",
    "{co} your app crashed again and I lost my {item} booking",
    "{co} worst service ever, my {item} never arrived",
    "{co} you charged me twice for the same {item}. fix this please",
    "{co} the {item} I ordered is damaged and support keeps ignoring me",
    "{co} delayed {n} hours and no one told us anything. terrible",
]
NO_COMPLAINT_TEMPLATES = [
    "thanks {co} for the quick delivery of my {item}!",
    "{co} loving my new {item}, great job",
    "just ordered a {item} from {co}, can't wait",
    "{co} what time do you open on Sunday?",
    "shoutout to {co} support, they set up my {item} in {n} minutes",
    "{co} is having a sale on every {item} this week",
    "great experience with {co} today, the staff were very kind",
    "{co} do you ship the {item} to Montréal?",
]

FACTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How many days are in a week?", "There are 7 days in a week."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Which planet is known as the red planet?", "Mars is the red planet."),
    ("What is the largest ocean?", "The Pacific Ocean is the largest."),
    ("At what temperature does water boil at sea level?", "At 100 degrees Celsius."),
    ("What is the French word for coffee?", "The French word is café."),
    ("What colour is a clear daytime sky?", "A clear daytime sky is blue."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("Who wrote Les Misérables?", "Victor Hugo wrote Les Misérables."),
    ("What gas do plants absorb?", "Plants absorb carbon dioxide."),
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "You are a friendly tutor who checks arithmetic carefully.",
]

FILLER_SUBJECTS = [
    "The old fisherman", "A curious student", "My neighbour", "The tired engineer",
    "Our small team", "The café owner", "A young painter", "The night train",
]  # fmt: skip
FILLER_VERBS = ["repaired", "painted", "described", "carried", "visited", "ordered"]
FILLER_OBJECTS = [
    "a wooden boat", "the blue résumé", "three fresh croissants", "the city library",
    "an élégant hat", "the quiet garden", "a broken bicycle", "the naïve plan",
]  # fmt: skip
FILLER_TAILS = [
    "before sunrise.", "after a long day.", "with great care.", "in the rain.",
    "near the river.", "without saying a word.", "for the first time.",
]  # fmt: skip


def _tweet(rng: random.Random) -> tuple[str, bool]:
    """Return a synthetic tweet and whether it is a complaint."""
    is_complaint = rng.random() < 0.5
    templates = COMPLAINT_TEMPLATES if is_complaint else NO_COMPLAINT_TEMPLATES
    text = rng.choice(templates).format(
        co=rng.choice(COMPANIES), item=rng.choice(ITEMS), n=rng.randint(2, 90)
    )
    return text, is_complaint


def _label(is_complaint: bool) -> str:
    return "complaint" if is_complaint else "no complaint"


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    """Return an arithmetic instruction and its answer."""
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    op = rng.choice(["add", "sub", "mul"])
    if op == "add":
        return f"Add {a} and {b}.", str(a + b)
    if op == "sub":
        return f"Subtract {b} from {a}.", str(a - b)
    return f"Multiply {a} by {b}.", str(a * b)


def make_twitter_rows(n: int = 200) -> list[Row]:
    """Single-column completion rows in the classic twitter_complaints format."""
    rng = random.Random(SEED)
    rows = []
    for _ in range(n):
        tweet, is_complaint = _tweet(rng)
        rows.append({"output": f"### Input: {tweet}\n\n### Response: {_label(is_complaint)}"})
    return rows


def make_input_output_rows(n: int = 300) -> list[Row]:
    """Prompt/completion rows: tweet classification and arithmetic instructions."""
    rng = random.Random(SEED)
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            tweet, is_complaint = _tweet(rng)
            rows.append(
                {
                    "input": f"### Input: {tweet}\n\n### Response:",
                    "output": f" {_label(is_complaint)}",
                }
            )
        else:
            question, answer = _arithmetic(rng)
            rows.append({"input": question, "output": answer})
    return rows


def make_chat_rows(n: int = 200) -> list[Row]:
    """Multi-turn conversations (1-4 exchanges), about half with a system message."""
    rng = random.Random(SEED)
    rows = []
    for _ in range(n):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                a, b = rng.randint(0, 50), rng.randint(0, 50)
                question, answer = f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
            else:
                question, answer = rng.choice(FACTS)
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        rows.append({"messages": messages})
    return rows


def make_filler_sentences(n: int = 400) -> list[str]:
    """Generic English-ish sentences so the tokenizer sees more than the datasets."""
    rng = random.Random(SEED)
    return [
        " ".join(
            [
                rng.choice(FILLER_SUBJECTS),
                rng.choice(FILLER_VERBS),
                rng.choice(FILLER_OBJECTS),
                rng.choice(FILLER_TAILS),
            ]
        )
        for _ in range(n)
    ]


# Printable Latin-1 (U+00A1..U+00FF) plus common typographic characters.
# Repeated as isolated pre-tokens (one per line) they win their byte merges
# before any merge with a neighbour, so none of them is split across tokens
# (a split character yields two tokens with the same character offsets).
MULTIBYTE_CHARS = (
    "".join(map(chr, range(0xA1, 0x100))) + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u20ac"
)
MULTIBYTE_REPEATS = 100


def iter_corpus() -> Iterator[str]:
    """Tokenizer training corpus: all dataset texts plus filler, in a fixed order."""
    for _ in range(MULTIBYTE_REPEATS):
        yield "\n".join(MULTIBYTE_CHARS)
    for row in make_twitter_rows():
        yield row["output"]
    for row in make_input_output_rows():
        yield row["input"] + row["output"]
    for row in make_chat_rows():
        for message in row["messages"]:
            yield message["content"]
    yield from make_filler_sentences()


# --------------------------------------------------------------------------
# Tokenizer + model
# --------------------------------------------------------------------------


def build_tokenizer() -> PreTrainedTokenizerBase:
    """Train the byte-level BPE and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=UNK))
    # No normalizer and no prefix space: offsets then index the raw string.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps leading spaces inside token offsets, so the
    # offsets tile the input exactly; this processor never adds bos/eos.
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(iter_corpus(), trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=ROLE_TOKENS,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """Create a randomly initialised 2-layer Llama sized to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    # fork_rng: seed locally without clobbering the caller's (e.g. pytest's) RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_artifacts(out_dir: Path | str = DEFAULT_OUT) -> PreTrainedTokenizerBase:
    """Write tokenizer + model to ``out_dir`` and return the tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    build_model(tokenizer).save_pretrained(out)
    # safetensors 0.8 creates model.safetensors with mode 0600; make the
    # folder readable by other users/containers like the json files next to it.
    for path in out.glob("*.safetensors"):
        path.chmod(0o644)
    return tokenizer


# --------------------------------------------------------------------------
# Dataset writers
# --------------------------------------------------------------------------


def _write_json(path: Path, rows: list[Row]) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=2)
        f.write("\n")


def _write_jsonl(path: Path, rows: list[Row]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_csv(path: Path, rows: list[Row]) -> None:
    # QUOTE_ALL: fields contain newlines, commas and leading spaces.
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["input", "output"], quoting=csv.QUOTE_ALL, lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)


def _write_arrow_stream(path: Path, rows: list[Row]) -> None:
    import pyarrow as pa

    table = pa.table(
        {
            "input": pa.array([r["input"] for r in rows], type=pa.string()),
            "output": pa.array([r["output"] for r in rows], type=pa.string()),
        }
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def pretokenize(rows: list[Row], tokenizer: PreTrainedTokenizerBase) -> list[Row]:
    """input_ids = input + output + eos; labels mask the input part with -100."""
    out = []
    for row in rows:
        prompt = tokenizer(row["input"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
        answer = [*answer, tokenizer.eos_token_id]
        out.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return out


def _write_parquet(path: Path, rows: list[Row]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    list_type = pa.list_(pa.int64())
    table = pa.table(
        {
            "input_ids": pa.array([r["input_ids"] for r in rows], type=list_type),
            "labels": pa.array([r["labels"] for r in rows], type=list_type),
        }
    )
    pq.write_table(table, path)


def write_datasets(data_dir: Path | str, tokenizer: PreTrainedTokenizerBase) -> list[Path]:
    """Write every sample dataset into ``data_dir``; return the written paths."""
    root = Path(data_dir)
    (root / "shards").mkdir(parents=True, exist_ok=True)

    twitter = make_twitter_rows()
    io_rows = make_input_output_rows()
    written: list[Path] = []

    def target(name: str) -> Path:
        written.append(root / name)
        return root / name

    _write_json(target("twitter_complaints.json"), twitter)
    _write_jsonl(target("twitter_complaints.jsonl"), twitter)
    _write_json(target("input_output.json"), io_rows)
    _write_jsonl(target("input_output.jsonl"), io_rows)
    _write_csv(target("input_output.csv"), io_rows)
    _write_arrow_stream(target("input_output.arrow"), io_rows)
    _write_jsonl(target("chat.jsonl"), make_chat_rows())
    _write_parquet(target("pretokenized.parquet"), pretokenize(io_rows, tokenizer))

    n_shards = 3
    size = -(-len(io_rows) // n_shards)  # ceil: contiguous, in-order shards
    for i in range(n_shards):
        _write_jsonl(target(f"shards/part-{i:05d}.jsonl"), io_rows[i * size : (i + 1) * size])
    return written


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for the tokenizer + model (default: %(default)s)",
    )
    parser.add_argument(
        "--datasets",
        action="store_true",
        help="also write the sample datasets (tokenized with the tokenizer just built)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder for the sample datasets (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    tokenizer = build_artifacts(args.out)
    print(f"artifacts: {args.out} ({time.perf_counter() - start:.1f}s)")
    if args.datasets:
        for path in write_datasets(args.data_dir, tokenizer):
            print(f"dataset: {path}")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
