"""Tests for the data-time row checks (tuning/data/finish.py) and handler errors (apply.py).

Why: pretokenized rows with ids outside the vocabulary crash the first forward with an
IndexError (exit 203), labels of another length or odd negative labels train on garbage, and an
exception inside a user's handler used to surface as its bare text. All of these must stop at
data time with a DataError naming the dataset, the count, the row and the fix.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tuning.data.finish import token_problems
from tuning.data.labels.base import IGNORE_INDEX
from tuning.errors import ConfigError, DataError

X = IGNORE_INDEX
VOCAB = 1000  # len() of artifacts/tiny-llama's tokenizer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def clean(n: int) -> list[dict]:
    return [{"input_ids": [1, 5 + i % 900, 6, 7], "labels": [X, X, 6, 7]} for i in range(n)]


def pretokenized(tmp_path: Path, bad: dict[int, dict], n: int = 10) -> str:
    rows = clean(n)
    for index, row in bad.items():
        rows[index] = row
    return str(write_jsonl(tmp_path / "tok.jsonl", rows))


def test_the_tiny_tokenizer_has_the_vocabulary_the_tests_assume(tiny_tokenizer):
    assert len(tiny_tokenizer) == VOCAB


def test_token_id_outside_the_vocabulary(prepare, tmp_path):
    path = pretokenized(
        tmp_path,
        {
            3: {"input_ids": [1, 5, 6, 70000, 8], "labels": [X, X, 6, 70000, 8]},
            7: {"input_ids": [1, 5, 1000], "labels": [X, 5, 1000]},
        },
    )
    with pytest.raises(DataError) as caught:
        prepare(training_data_path=path)
    message = str(caught.value)
    assert message.startswith("dataset 'training_data': 2 of 10 rows have token ids")
    assert "2 of 10 rows" in message
    assert "2 with a token id outside the vocabulary" in message
    assert (
        "First: row 3: token id 70000 at position 3 is outside the vocabulary (1000 tokens)"
        in message
    )
    assert "token ids must be 0..999" in message and "tokenizer" in message


def test_negative_token_id(prepare, tmp_path):
    path = pretokenized(tmp_path, {5: {"input_ids": [1, -4, 6], "labels": [X, X, 6]}})
    with pytest.raises(DataError) as caught:
        prepare(training_data_path=path)
    message = str(caught.value)
    assert "1 of 10 rows" in message
    assert "1 with a negative or missing token id" in message
    assert "First: row 5: token id -4 at position 1 is negative" in message
    assert "token ids must be 0..999" in message


def test_labels_of_another_length(prepare, tmp_path):
    path = pretokenized(
        tmp_path,
        {
            2: {"input_ids": [1, 5, 6, 7], "labels": [X, 6, 7]},
            4: {"input_ids": [1, 5], "labels": [X, 5, 6]},
            6: {"input_ids": [1, 5, 6], "labels": [X, X, 6]},  # fine
        },
    )
    with pytest.raises(DataError) as caught:
        prepare(training_data_path=path)
    message = str(caught.value)
    assert "2 of 10 rows" in message
    assert "2 with labels not as long as input_ids" in message
    assert "First: row 2: it has 3 labels for 4 input_ids (they must be the same length)" in message
    assert "give every row as many labels as input_ids" in message


def test_negative_labels_other_than_ignore_index(prepare, tmp_path):
    path = pretokenized(tmp_path, {8: {"input_ids": [1, 5, 6], "labels": [X, -1, 6]}})
    with pytest.raises(DataError, match=r"1 of 10 rows") as caught:
        prepare(training_data_path=path)
    assert "row 8: label -1 at position 1 is negative (only -100" in str(caught.value)


def test_a_clean_pretokenized_file_passes_untouched(prepare, tmp_path):
    rows = clean(6)
    rows[0] = {"input_ids": [1, 999, 0], "labels": [X, 999, 0]}  # the vocabulary's edges
    path = str(write_jsonl(tmp_path / "ok.jsonl", rows))
    prepared = prepare(training_data_path=path)
    assert [dict(r) for r in prepared.train] == rows
    assert prepared.report.datasets[0].rows == 6


def test_token_problems_counts_each_kind_once_per_row():
    import pyarrow as pa

    ids = pa.array([[1, 2], [5000, -1, 7000], [3], [4, 4]])
    labels = pa.array([[X, 2], [X, X, X], [3, 3], [X, -7]])
    problems = token_problems(ids, labels, VOCAB, "d")
    assert problems.bad.tolist() == [1, 2, 3]
    assert problems.kinds == {
        "with a token id outside the vocabulary": 1,
        "with a negative or missing token id": 1,
        "with labels not as long as input_ids": 1,
        "with a label that is neither -100 nor a token id": 1,
    }
    assert problems.first == "token id 5000 at position 0 is outside the vocabulary (1000 tokens)"


def test_ids_that_are_not_numbers_are_named():
    import pyarrow as pa

    with pytest.raises(DataError, match=r"dataset 'd': input_ids must be lists of integer"):
        token_problems(pa.array([["a"]]), pa.array([[1]]), VOCAB, "d")


STREAM_CONFIG = """\
dataprocessor: {streaming: true}
datasets:
  - name: tokens
    data_paths: [tok.jsonl]
"""


def test_streamed_rows_are_checked_first_and_as_they_pass(prepare, tmp_path):
    config = tmp_path / "data_config.yaml"
    config.write_text(STREAM_CONFIG, encoding="utf-8")
    bad = {"input_ids": [1, 5, 4242], "labels": [X, 5, 4242]}
    pretokenized(tmp_path, {2: bad}, n=100)
    with pytest.raises(DataError, match=r"1 of the first 64 rows .* row 2: token id 4242"):
        prepare(data_config_path=str(config))
    pretokenized(tmp_path, {1050: bad}, n=1100)  # past the rows read while preparing
    prepared = prepare(data_config_path=str(config))
    with pytest.raises(DataError, match=r"'tokens' \(streamed\): row 1050 .* token id 4242"):
        list(prepared.train)


HANDLERS_MODULE = """
from tuning.data.handlers import HandlerArgs
from tuning.errors import DataError


class NoArgs(HandlerArgs):
    pass


def explode_on_seven(row, args, ctx):
    if row["input"] == "Add 7 and 1.":
        raise KeyError("price")
    return {"input": row["input"].upper()}


explode_on_seven.arguments = NoArgs


def batch_divides(batch, args, ctx):
    return {"n": [1 // (len(x) - 12) for x in batch["input"]]}


batch_divides.arguments = NoArgs
batch_divides.batched_support = True


def refuses(row, args, ctx):
    raise DataError("row has no price column; add one")


refuses.arguments = NoArgs
"""


@pytest.fixture
def handler_config(tmp_path, monkeypatch):
    (tmp_path / "rowcheck_handlers_mod.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    write_jsonl(
        tmp_path / "a.jsonl",
        [{"input": f"Add {i} and 1.", "output": f"{i + 1}"} for i in range(10)],
    )

    def write(function: str, arguments: str = "{}") -> str:
        path = tmp_path / f"{function}.yaml"
        path.write_text(
            textwrap.dedent(
                f"""\
                datasets:
                  - name: sums
                    data_paths: [a.jsonl]
                    data_handlers:
                      - name: rowcheck_handlers_mod:{function}
                        arguments: {arguments}
                      - name: tokenize_and_apply_input_masking
                        arguments: {{remove_columns: all}}
                """
            ),
            encoding="utf-8",
        )
        return str(path)

    return write


def test_a_user_handler_raising_on_one_row_names_handler_dataset_and_row(prepare, handler_config):
    with pytest.raises(DataError) as caught:
        prepare(data_config_path=handler_config("explode_on_seven"))
    assert str(caught.value) == (
        "data handler 'rowcheck_handlers_mod:explode_on_seven' failed on dataset 'sums', row 7: "
        "KeyError: 'price'. Fix the handler or the data."
    )
    assert isinstance(caught.value.__cause__, KeyError)


def test_a_batched_user_handler_names_the_batch(prepare, handler_config):
    with pytest.raises(DataError) as caught:
        prepare(data_config_path=handler_config("batch_divides", "{batch_size: 4}"))
    message = str(caught.value)
    assert "data handler 'rowcheck_handlers_mod:batch_divides' failed on dataset 'sums'" in message
    assert "rows 0..3: ZeroDivisionError: integer division or modulo by zero." in message


def test_a_user_handler_in_worker_processes_names_the_rows(prepare, handler_config):
    with pytest.raises(DataError, match=r"'sums', row 7: KeyError: 'price'"):
        prepare(data_config_path=handler_config("explode_on_seven", "{num_proc: 2}"))


def test_a_tuneforge_error_from_a_handler_passes_unchanged(prepare, handler_config):
    with pytest.raises(DataError) as caught:
        prepare(data_config_path=handler_config("refuses"))
    assert str(caught.value) == "row has no price column; add one"


def test_handler_errors_do_not_hide_config_errors(prepare, handler_config):
    with pytest.raises(ConfigError, match="fn_kwargs"):
        prepare(data_config_path=handler_config("explode_on_seven", "{fn_kwargs: {x: 1}}"))
