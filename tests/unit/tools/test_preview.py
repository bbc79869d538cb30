"""Tests for tuning/tools/preview.py: what the model will train on, shown before training.

Why: the preview is how a user checks a loss mask by eye; the highlighted part must be exactly
the trained tokens, the HTML must be escaped (chat text is full of `<...>`), and it must load
no model weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tuning.data.labels.base import IGNORE_INDEX
from tuning.tools import preview

X = IGNORE_INDEX
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "data_configs"


@pytest.fixture(autouse=True)
def no_model_weights(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the preview must not load a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture
def tokenizer_dir(tiny_tokenizer) -> str:
    return str(REPO / "artifacts" / "tiny-llama")


def test_split_sample_marks_exactly_the_trained_tokens(tiny_tokenizer):
    sample = preview.split_sample(
        tiny_tokenizer, [623, 964, 347, 553, 21, 553, 2], [X, X, X, X, X, 553, 2]
    )
    assert sample.pieces == [("Add 0 and 8.", False), (" 8</s>", True)]
    assert sample.plain() == "Add 0 and 8.[[ 8</s>]]"
    assert sample.ansi() == "Add 0 and 8.\x1b[1;32m 8</s>\x1b[0m"
    assert sample.html() == 'Add 0 and 8.<span class="trained"> 8&lt;/s&gt;</span>'


def test_length_histogram_counts_every_row_in_its_bin():
    assert preview.length_histogram([3, 1, 2, 10, 10, 10, 7, 5], bins=4, width=6) == [
        " 1-3      3 ######",
        " 4-5      1 ##",
        " 6-8      1 ##",
        "9-10      3 ######",
    ]
    assert preview.length_histogram([5, 5]) == ["5      2 ##############################"]
    assert preview.length_histogram([]) == []


def test_length_summary():
    assert preview.length_summary([3, 1, 2, 10]) == {"min": 1, "median": 2, "p95": 8, "max": 10}
    assert preview.length_summary([]) == {"min": 0, "median": 0, "p95": 0, "max": 0}


def test_preview_of_a_data_config_with_html(tokenizer_dir, tmp_path, capsys):
    page = tmp_path / "preview.html"
    code = preview.main(
        [
            "--data_config",
            str(CONFIGS / "chat_assistant_only.yaml"),
            "--tokenizer",
            tokenizer_dir,
            "-n",
            "2",
            "--html",
            str(page),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "=== chat ===" in out
    assert (
        "<s><|user|>\nWhat is the capital of Canada?<|end|>\n<|assistant|>\n"
        "[[The capital of Canada is Ottawa.<|end|>]]\n" in out
    )
    assert "token lengths: min " in out and "p95" in out
    assert "0 without a trained token" in out and "prompt trimmed in" in out
    assert "training mixture: chat: 200 rows" in out
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert (
        "&lt;s&gt;&lt;|user|&gt;\nWhat is the capital of Canada?&lt;|end|&gt;\n"
        '&lt;|assistant|&gt;\n<span class="trained">The capital of Canada is Ottawa.'
        "&lt;|end|&gt;</span>" in html
    )
    assert "<|user|>" not in html


def test_preview_with_legacy_flags(tokenizer_dir, capsys):
    code = preview.main(
        [
            "--training_data_path",
            str(CONFIGS / "data" / "twitter_complaints.jsonl"),
            "--dataset_text_field",
            "output",
            "--response_template",
            "\\n### Response:",
            "--tokenizer",
            tokenizer_dir,
            "-n",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "### Input: thanks @BrightBank for the quick delivery of my ticket!\n\n"
        "### Response:[[ no complaint</s>]]" in out
    )
    assert "--- sample 2 ---" not in out


def test_preview_reports_problems_and_exits_1(tokenizer_dir, capsys):
    code = preview.main(
        [
            "--training_data_path",
            str(CONFIGS / "data" / "twitter_complaints.jsonl"),
            "--dataset_text_field",
            "output",
            "--response_template",
            " ### Response:",
            "--tokenizer",
            tokenizer_dir,
        ]
    )
    assert code == 1
    assert "does not occur" in capsys.readouterr().err
