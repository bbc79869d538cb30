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

gpt-oss artifacts (only with --gpt-oss-out, e.g. artifacts/tiny-gpt-oss/):
  * the same BPE plus harmony's <|start|> <|return|> <|channel|> <|message|> (eos <|return|>)
    and a simplified harmony chat template that renders an assistant's `thinking` field in
    the analysis channel before its content in the final channel;
  * GptOssForCausalLM (2 layers sliding/full attention, hidden 64, 4 experts, top-2) stored as
    the gpt-oss checkpoints are: experts in MXFP4 (`*_blocks` nibble-packed FP4 E2M1 values,
    `*_scales` E8M0 exponents, one per 32 values), everything else bfloat16, config
    `quantization_config: {"quant_method": "mxfp4", "modules_to_not_convert": [...]}`;
  * <out>-reference.safetensors next to the folder: the expert weights before quantization.

Datasets (only with --datasets, default: data_configs/data/):
  twitter_complaints.json/.jsonl   {"output": "### Input: ...\\n\\n### Response: ..."}
  input_output.json/.jsonl/.csv/.arrow (Arrow IPC stream)   {"input", "output"}
  chat.jsonl                       {"messages": [{"role", "content"}, ...]}
  thinking.jsonl                   {"messages": [system, user, {"role", "thinking", "content"}]}
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
    import numpy as np
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "artifacts" / "tiny-llama"
DEFAULT_GPT_OSS_OUT = REPO_ROOT / "artifacts" / "tiny-gpt-oss"
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


# (reasoning language, question, thinking, answer): Multilingual-Thinking's shape, short enough
# that a conversation fits in 128 tokens of the tiny BPE. Not part of the tokenizer corpus.
THINKING_EXAMPLES = [
    ("English", "What is 12 + 7?", "Twelve plus seven: 12 + 7 = 19.", "12 + 7 = 19."),
    ("English", "Is 15 an even number?", "15 = 2 * 7 + 1, so it leaves a remainder.",
     "No, 15 is odd."),
    ("English", "How many legs do two spiders have?", "One spider has 8 legs, so 2 * 8 = 16.",
     "Two spiders have 16 legs."),
    ("English", "What is the capital of Japan?", "The capital city of Japan is Tokyo.",
     "Tokyo."),
    ("French", "Combien font 6 fois 7 ?", "Je multiplie : 6 * 7 = 42.", "6 fois 7 font 42."),
    ("French", "Quelle est la capitale de l'Italie ?", "La capitale de l'Italie est Rome.",
     "C'est Rome."),
    ("French", "Un café coûte 3 €, combien pour deux ?", "Deux cafés : 2 * 3 = 6 €.",
     "Deux cafés coûtent 6 €."),
    ("French", "Combien de minutes dans une heure ?", "Une heure compte 60 minutes.",
     "Il y a 60 minutes."),
    ("German", "Was ist 9 plus 8?", "Ich addiere: 9 + 8 = 17.", "9 plus 8 ist 17."),
    ("German", "Wie viele Tage hat eine Woche?", "Eine Woche hat sieben Tage.",
     "Eine Woche hat 7 Tage."),
    ("German", "Welche Farbe hat der Himmel am Tag?", "Bei klarem Wetter ist er blau.",
     "Der Himmel ist blau."),
    ("German", "Ist 21 durch 3 teilbar?", "21 = 3 * 7, also ohne Rest.", "Ja, 21 : 3 = 7."),
    ("Spanish", "¿Cuánto es 20 menos 5?", "Resto: 20 - 5 = 15.", "20 menos 5 es 15."),
    ("Spanish", "¿Cuál es la capital de Francia?", "La capital de Francia es París.",
     "Es París."),
    ("Spanish", "¿Cuántas patas tiene un gato?", "Un gato tiene cuatro patas.",
     "Tiene 4 patas."),
    ("Spanish", "¿Qué planeta es el planeta rojo?", "Marte se ve rojo por el óxido.",
     "Es Marte."),
    ("Italian", "Quanto fa 4 per 5?", "Moltiplico: 4 * 5 = 20.", "4 per 5 fa 20."),
    ("Italian", "Qual è l'oceano più grande?", "Il Pacifico è il più grande.",
     "L'oceano Pacifico."),
    ("Portuguese", "Quanto é 11 mais 11?", "Somo: 11 + 11 = 22.", "11 mais 11 é 22."),
    ("Portuguese", "Qual é a capital do Canadá?", "A capital do Canadá é Ottawa.",
     "É Ottawa."),
]  # fmt: skip


def make_thinking_rows() -> list[Row]:
    """Reasoning chats: system names the reasoning language, the assistant message carries
    `thinking` (harmony's analysis channel) and `content` (the final answer)."""
    return [
        {
            "messages": [
                {"role": "system", "content": f"reasoning language: {language}"},
                {"role": "user", "content": question},
                {"role": "assistant", "thinking": thinking, "content": answer},
            ]
        }
        for language, question, thinking, answer in THINKING_EXAMPLES
    ]


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
# gpt-oss: harmony tokenizer + MXFP4 checkpoint
# --------------------------------------------------------------------------

GPT_OSS_MAX_LENGTH = 4096
# Harmony's message delimiters; <|end|> is already one of ROLE_TOKENS. Order fixes the ids
# 1000..1003 (the BPE fills 0..999).
HARMONY_TOKENS = ["<|start|>", "<|return|>", "<|channel|>", "<|message|>"]
# Simplified harmony: no system preamble, the analysis channel for an assistant's `thinking`,
# the final channel for its content, <|return|> after the last assistant turn and <|end|> after
# every other turn. {% generation %} spans what the model writes after `<|start|>assistant`,
# thinking included, so chat masking trains the reasoning too.
HARMONY_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "<|start|>assistant{% generation %}"
    "{% if m.get('thinking') %}"
    "<|channel|>analysis<|message|>{{ m['thinking'] }}<|end|><|start|>assistant"
    "{% endif %}"
    "<|channel|>final<|message|>{{ m['content'] }}"
    "{% if loop.last %}<|return|>{% else %}<|end|>{% endif %}"
    "{% endgeneration %}"
    "{% else %}"
    "<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)

MXFP4_BLOCK = 32  # values sharing one scale
# FP4 E2M1 magnitudes by code 0..7; bit 3 is the sign (transformers' FP4_VALUES order).
FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E8M0_BIAS = 127
# What openai/gpt-oss-* keep unquantized (their config.json).
GPT_OSS_MODULES_TO_NOT_CONVERT = [
    "model.layers.*.self_attn",
    "model.layers.*.mlp.router",
    "model.embed_tokens",
    "lm_head",
]
EXPERT_PROJECTIONS = ("gate_up_proj", "down_proj")


def reference_path(gpt_oss_out: Path | str) -> Path:
    """Where the pre-quantization expert weights go: next to the model folder, not inside."""
    out = Path(gpt_oss_out)
    return out.with_name(f"{out.name}-reference.safetensors")


def build_gpt_oss_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of the tiny BPE with harmony's special tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    vocab = backend.get_vocab()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in HARMONY_TOKENS if t not in vocab]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token="<|return|>",
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[*ROLE_TOKENS, *(t for t in HARMONY_TOKENS if t != "<|return|>")],
        model_max_length=GPT_OSS_MAX_LENGTH,
        chat_template=HARMONY_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def _block_exponents(amax: np.ndarray) -> np.ndarray:
    """Per block, the smallest e with amax <= 6 * 2**e (E2M1's largest magnitude): the scale
    that clips nothing. Exact: frexp gives a first guess, one step each way corrects it."""
    import numpy as np

    _, exponent = np.frexp(amax / FP4_E2M1[-1])
    e = exponent.astype(np.int64)
    e = np.where(amax > FP4_E2M1[-1] * np.ldexp(1.0, e), e + 1, e)
    e = np.where(amax <= FP4_E2M1[-1] * np.ldexp(1.0, e - 1), e - 1, e)
    return np.where(amax > 0, e, -E8M0_BIAS).clip(-E8M0_BIAS, E8M0_BIAS)


def quantize_mxfp4(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MXFP4 along the last axis: blocks [..., n/32, 16] uint8 (two E2M1 codes per byte, the
    even-indexed value in the low nibble) and scales [..., n/32] uint8 (E8M0: exponent + 127).

    Each block of 32 shares the power-of-two scale that clips nothing; every value rounds to
    the nearest E2M1 magnitude, ties to the even code; the sign is kept (-0 included).
    """
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    *lead, n = v.shape
    if n % MXFP4_BLOCK:
        raise ValueError(f"MXFP4 needs a multiple of {MXFP4_BLOCK} values per row, got {n}")
    v = v.reshape(*lead, n // MXFP4_BLOCK, MXFP4_BLOCK)
    e = _block_exponents(np.abs(v).max(axis=-1))
    scaled = np.abs(v) / np.ldexp(1.0, e)[..., None]
    grid = np.asarray(FP4_E2M1)
    low = np.clip(np.searchsorted(grid, scaled, side="right") - 1, 0, len(grid) - 2)
    below, above = scaled - grid[low], grid[low + 1] - scaled
    code = low + ((below > above) | ((below == above) & (low % 2 == 1)))
    code = code | (np.signbit(v) * 8)
    pairs = code.astype(np.uint8).reshape(*lead, n // MXFP4_BLOCK, MXFP4_BLOCK // 2, 2)
    blocks = pairs[..., 0] | (pairs[..., 1] << 4)
    scales = (e + E8M0_BIAS).astype(np.uint8)
    return np.ascontiguousarray(blocks, dtype=np.uint8), np.ascontiguousarray(scales)


def build_gpt_oss_model(tokenizer: PreTrainedTokenizerBase) -> Any:
    """A randomly initialised 2-layer GptOssForCausalLM sized to the tokenizer (float32)."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,  # multiples of 32: MXFP4 blocks run along both expert input sizes
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=64,
        max_position_embeddings=GPT_OSS_MAX_LENGTH,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": GPT_OSS_MAX_LENGTH // 32,
        },
        router_aux_loss_coef=0.9,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GptOssForCausalLM(config).to(torch.float32)
        # zeros by default: random biases show that they load as plain tensors
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.experts.gate_up_proj_bias.normal_(0.0, 0.02)
                layer.mlp.experts.down_proj_bias.normal_(0.0, 0.02)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def mxfp4_checkpoint(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint tensors as gpt-oss stores them, and the reference expert weights.

    Expert weights are [experts, in, out] in the model and stored transposed, quantized along
    `in`: gate_up_proj [E, H, 2I] -> gate_up_proj_blocks [E, 2I, H/32, 16] and
    gate_up_proj_scales [E, 2I, H/32]; down_proj [E, I, H] -> [E, H, I/32, 16] and [E, H, I/32].
    Everything else (expert biases included) is bfloat16.
    """
    import torch

    tensors, reference = {}, {}
    for name, tensor in model.state_dict().items():
        base, _, param = name.rpartition(".")
        if base.endswith("mlp.experts") and param in EXPERT_PROJECTIONS:
            weight = tensor.detach().to(torch.float32)
            reference[name] = weight.clone().contiguous()
            blocks, scales = quantize_mxfp4(weight.transpose(1, 2).numpy())
            tensors[f"{name}_blocks"] = torch.from_numpy(blocks)
            tensors[f"{name}_scales"] = torch.from_numpy(scales)
        else:
            tensors[name] = tensor.detach().to(torch.bfloat16).contiguous()
    return tensors, reference


def build_gpt_oss_artifacts(
    out_dir: Path | str = DEFAULT_GPT_OSS_OUT, tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Write the harmony tokenizer + MXFP4 gpt-oss checkpoint to ``out_dir`` and the reference
    expert weights next to it; return the model folder. ``tokenizer``: the tiny BPE (trained
    here when not given)."""
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    harmony = build_gpt_oss_tokenizer(tokenizer or build_tokenizer())
    harmony.save_pretrained(out)
    model = build_gpt_oss_model(harmony)
    tensors, reference = mxfp4_checkpoint(model)
    config = model.config
    config.dtype = torch.bfloat16
    config.quantization_config = {
        "modules_to_not_convert": GPT_OSS_MODULES_TO_NOT_CONVERT,
        "quant_method": "mxfp4",
    }
    config.architectures = ["GptOssForCausalLM"]
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    save_file(reference, str(reference_path(out)), metadata={"format": "pt"})
    for path in [*out.glob("*.safetensors"), reference_path(out)]:
        path.chmod(0o644)
    return out


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
    _write_jsonl(target("thinking.jsonl"), make_thinking_rows())
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
    parser.add_argument(
        "--gpt-oss-out",
        type=Path,
        default=None,
        help="also write the tiny MXFP4 gpt-oss model to this folder (e.g. "
        f"{DEFAULT_GPT_OSS_OUT.relative_to(REPO_ROOT)}) and its reference expert weights to "
        "<folder>-reference.safetensors",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    tokenizer = build_artifacts(args.out)
    print(f"artifacts: {args.out} ({time.perf_counter() - start:.1f}s)")
    if args.gpt_oss_out is not None:
        start = time.perf_counter()
        build_gpt_oss_artifacts(args.gpt_oss_out, tokenizer)
        print(f"artifacts: {args.gpt_oss_out} ({time.perf_counter() - start:.1f}s)")
    if args.datasets:
        for path in write_datasets(args.data_dir, tokenizer):
            print(f"dataset: {path}")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
