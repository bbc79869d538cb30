"""Tests for tuning/data/sources.py.

Why: every data path a user gives goes through resolve/detect/peek before any model loads, so a
wrong path or a malformed file must fail here, fast, naming the file and the fix; and load_rows
must give `datasets` exactly the rows peek_rows promised, for every format we accept.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuning.data.sources import (
    detect_builder,
    load_rows,
    peek_rows,
    resolve_data_paths,
)
from tuning.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[3]
SAMPLES = REPO_ROOT / "data_configs" / "data"
ROWS = [{"input": f"question {i}", "output": f"answer {i}"} for i in range(7)]


# --- writers for each format -------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict] = ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json_array(path: Path, rows: list[dict] = ROWS) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict] = ROWS) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    return path


def write_arrow_stream(path: Path, rows: list[dict] = ROWS) -> Path:
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    return path


def write_arrow_file(path: Path, rows: list[dict] = ROWS) -> Path:
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def write_csv(path: Path, rows: list[dict] = ROWS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_saved_dataset(path: Path, rows: list[dict] = ROWS) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_saved_dataset_dict(path: Path) -> Path:
    import datasets

    datasets.DatasetDict(
        {
            "train_sft": datasets.Dataset.from_list(ROWS),
            "test_sft": datasets.Dataset.from_list(ROWS[:2]),
        }
    ).save_to_disk(str(path))
    return path


FORMATS = {
    "json_array": ("data.json", write_json_array, "json"),
    "jsonl": ("data.jsonl", write_jsonl, "json"),
    "parquet": ("data.parquet", write_parquet, "parquet"),
    "arrow_stream": ("data.arrow", write_arrow_stream, "arrow"),
    "csv": ("data.csv", write_csv, "csv"),
    "saved_dataset": ("saved", write_saved_dataset, "saved"),
}


def _load(paths: list[Path], builder: str, tmp_path: Path, **kwargs):
    return load_rows(paths, builder, cache_dir=str(tmp_path / "hf-cache"), **kwargs)


# --- each format: detect, peek and load agree ----------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_each_format_peeks_and_loads_the_same_rows(tmp_path: Path, kind: str) -> None:
    name, write, expected_builder = FORMATS[kind]
    written = write(tmp_path / name)
    paths = resolve_data_paths([name], base_dir=tmp_path, field="datasets[0].data_paths")
    assert paths == [written]
    builder = detect_builder(paths, None)
    assert builder == expected_builder
    assert peek_rows(paths, builder, n=3) == ROWS[:3]
    dataset = _load(paths, builder, tmp_path)
    assert dataset.num_rows == len(ROWS)
    assert dataset.to_list() == ROWS


def test_text_format_gives_one_row_per_line(tmp_path: Path) -> None:
    (tmp_path / "lines.txt").write_text("first line\nsecond line\n", encoding="utf-8")
    paths = resolve_data_paths(["lines.txt"], base_dir=tmp_path, field="f")
    assert detect_builder(paths, None) == "text"
    assert peek_rows(paths, "text") == [{"text": "first line"}, {"text": "second line"}]
    assert _load(paths, "text", tmp_path)["text"] == ["first line", "second line"]


def test_arrow_file_format_is_read_when_not_a_stream(tmp_path: Path) -> None:
    path = write_arrow_file(tmp_path / "data.arrow")
    assert peek_rows([path], "arrow", n=2) == ROWS[:2]


def test_parquet_peek_reads_only_what_it_needs(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "data.parquet")
    assert peek_rows([path], "parquet", n=1) == ROWS[:1]


def test_json_with_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    assert peek_rows([path], "json") == ROWS[:1]


def test_streaming_gives_an_iterable_dataset(tmp_path: Path) -> None:
    import datasets

    path = write_jsonl(tmp_path / "data.jsonl")
    dataset = _load([path], "json", tmp_path, streaming=True)
    assert isinstance(dataset, datasets.IterableDataset)
    assert list(dataset) == ROWS


def test_saved_dataset_streams_too(tmp_path: Path) -> None:
    import datasets

    folder = write_saved_dataset(tmp_path / "saved")
    dataset = _load([folder], "saved", tmp_path, streaming=True)
    assert isinstance(dataset, datasets.IterableDataset)
    assert list(dataset) == ROWS


# --- folders, globs and saved datasets ----------------------------------------------------------


def test_folder_of_jsonl_is_sorted_recursive_and_skips_hidden(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    write_jsonl(folder / "b.jsonl", ROWS[3:])
    write_jsonl(folder / "a.jsonl", ROWS[:2])
    write_jsonl(folder / "nested" / "c.jsonl", ROWS[2:3])
    write_jsonl(folder / ".hidden.jsonl", [{"input": "x", "output": "y"}])
    write_jsonl(folder / ".cache" / "d.jsonl", [{"input": "x", "output": "y"}])
    (folder / "README.md").write_text("not data", encoding="utf-8")
    paths = resolve_data_paths(["shards"], base_dir=tmp_path, field="f")
    assert [p.relative_to(folder).as_posix() for p in paths] == [
        "a.jsonl",
        "b.jsonl",
        "nested/c.jsonl",
    ]
    assert detect_builder(paths, None) == "json"
    assert peek_rows(paths, "json", n=3) == ROWS[:2] + ROWS[3:4]
    assert _load(paths, "json", tmp_path).num_rows == len(ROWS)


def test_glob_is_resolved_relative_to_base_dir(tmp_path: Path) -> None:
    for i in range(3):
        write_jsonl(tmp_path / "parts" / f"part-{i}.jsonl", ROWS[i : i + 1])
    write_jsonl(tmp_path / "parts" / "other.jsonl", ROWS)
    paths = resolve_data_paths(["parts/part-*.jsonl"], base_dir=tmp_path, field="f")
    assert [p.name for p in paths] == ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl"]
    assert _load(paths, detect_builder(paths, None), tmp_path).to_list() == ROWS[:3]


def test_glob_under_a_hidden_base_folder_still_matches(tmp_path: Path) -> None:
    base = tmp_path / ".config" / "project"
    write_jsonl(base / "a.jsonl")
    write_jsonl(base / ".skip.jsonl")
    assert resolve_data_paths(["*.jsonl"], base_dir=base, field="f") == [base / "a.jsonl"]
    assert resolve_data_paths(["."], base_dir=base, field="f") == [base / "a.jsonl"]


def test_folder_with_a_state_json_data_file_is_not_a_saved_dataset(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "state.json", ROWS[:1])
    write_jsonl(tmp_path / "d" / "more.jsonl", ROWS[1:2])
    paths = resolve_data_paths(["d"], base_dir=tmp_path, field="f")
    assert [p.name for p in paths] == ["more.jsonl", "state.json"]
    assert detect_builder(paths, None) == "json"


def test_overlapping_entries_are_listed_once(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "a.jsonl")
    paths = resolve_data_paths(["d", "d/*.jsonl", "d/a.jsonl"], base_dir=tmp_path, field="f")
    assert paths == [tmp_path / "d" / "a.jsonl"]


def test_saved_dataset_folder_is_one_entry_even_inside_a_folder(tmp_path: Path) -> None:
    write_saved_dataset(tmp_path / "all" / "saved")
    write_jsonl(tmp_path / "all" / "extra.jsonl")
    paths = resolve_data_paths(["all"], base_dir=tmp_path, field="f")
    assert paths == [tmp_path / "all" / "extra.jsonl", tmp_path / "all" / "saved"]
    with pytest.raises(DataError, match="mixes data formats"):
        detect_builder(paths, None)


def test_saved_dataset_dict_uses_the_named_split(tmp_path: Path) -> None:
    folder = write_saved_dataset_dict(tmp_path / "dd")
    paths = resolve_data_paths([str(folder)], field="f")
    assert paths == [folder]
    assert detect_builder(paths, None) == "saved"
    assert peek_rows(paths, "saved", n=5, split_name="test_sft") == ROWS[:2]
    assert _load(paths, "saved", tmp_path, split_name="train_sft").to_list() == ROWS
    assert _load(paths, "saved", tmp_path, split_name="test_sft").num_rows == 2


def test_saved_dataset_dict_with_a_wrong_split_lists_the_splits(tmp_path: Path) -> None:
    folder = write_saved_dataset_dict(tmp_path / "dd")
    with pytest.raises(DataError, match=r"no split 'train'.*train_sft, test_sft"):
        _load([folder], "saved", tmp_path, split_name="train")
    with pytest.raises(DataError, match="set dataset_split_name"):
        peek_rows([folder], "saved")


def test_saved_dataset_dict_with_one_split_needs_no_name(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "one"
    datasets.DatasetDict({"only": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    assert peek_rows([folder], "saved", n=2) == ROWS[:2]
    assert _load([folder], "saved", tmp_path).num_rows == len(ROWS)


# --- the committed sample data --------------------------------------------------------------------


SAMPLE_FILES = sorted(
    p.name
    for p in SAMPLES.glob("*")
    if p.suffix in {".json", ".jsonl", ".parquet", ".arrow", ".csv"}
)


@pytest.mark.skipif(not SAMPLE_FILES, reason="data_configs/data not generated yet")
@pytest.mark.parametrize("name", SAMPLE_FILES or ["none"])
def test_shipped_sample_files_peek_and_load(tmp_path: Path, name: str) -> None:
    paths = resolve_data_paths([name], base_dir=SAMPLES, field="f")
    builder = detect_builder(paths, None)
    first = peek_rows(paths, builder, n=2)
    assert len(first) == 2
    dataset = _load(paths, builder, tmp_path)
    assert dataset.num_rows > 0
    assert sorted(dataset.column_names) == sorted(first[0])


# --- errors name the field, the path and the fix --------------------------------------------------


def test_missing_path_names_the_field_and_the_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"datasets\[0\]\.data_paths\[1\].*'nope\.jsonl'.*resolved"):
        resolve_data_paths(["nope.jsonl"], base_dir=tmp_path, field="datasets[0].data_paths[1]")


def test_glob_matching_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--training_data_path: the pattern 'x/\*\.jsonl'"):
        resolve_data_paths(["x/*.jsonl"], base_dir=tmp_path, field="--training_data_path")


def test_folder_without_data_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="contains no data files"):
        resolve_data_paths(["empty"], base_dir=tmp_path, field="f")


def test_relative_path_without_base_dir_uses_cwd(tmp_path: Path, monkeypatch) -> None:
    write_jsonl(tmp_path / "here.jsonl")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_paths(["here.jsonl"], field="f") == [tmp_path / "here.jsonl"]


def test_mixed_extensions_are_an_error(tmp_path: Path) -> None:
    paths = [write_jsonl(tmp_path / "a.jsonl"), write_csv(tmp_path / "b.csv")]
    with pytest.raises(DataError, match=r"mixes data formats: 'a\.jsonl' \(json\), 'b\.csv'"):
        detect_builder(paths, None)


def test_json_and_jsonl_together_are_one_format(tmp_path: Path) -> None:
    paths = [write_jsonl(tmp_path / "a.jsonl"), write_json_array(tmp_path / "b.json")]
    assert detect_builder(paths, None) == "json"


def test_unknown_extension_lists_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"'\.xlsx'.*Supported formats: \.json/\.jsonl"):
        detect_builder([path], None)


def test_explicit_builder_wins_and_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "data.log"
    path.write_text("a line\n", encoding="utf-8")
    assert detect_builder([path], "text") == "text"
    with pytest.raises(DataError, match="Did you mean 'json'"):
        detect_builder([path], "jsn")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.txt"])
def test_empty_file_has_no_rows(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("" if name != "empty.csv" else "input,output\n", encoding="utf-8")
    builder = detect_builder([path], None)
    with pytest.raises(DataError, match=re.escape(f"{name} has no rows")):
        peek_rows([path], builder)


def test_empty_json_array_and_parquet_have_no_rows(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.json has no rows"):
        peek_rows([tmp_path / "a.json"], "json")
    pq.write_table(pa.table({"x": pa.array([], pa.int64())}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e\.parquet has no rows"):
        peek_rows([tmp_path / "e.parquet"], "parquet")


def test_empty_file_is_refused_by_load_rows_too(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl has no rows"):
        _load([good, empty], "json", tmp_path)


def test_malformed_jsonl_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl line 2 is not valid JSON.*one complete JSON"):
        peek_rows([path], "json")


def test_malformed_json_array_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"input": "a"},\n  {"input": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON: .* at line 3, column"):
        peek_rows([path], "json")


def test_json_rows_must_be_objects(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")
    # a line starting with "[" reads as a JSON array of non-objects
    with pytest.raises(DataError, match="not an object"):
        peek_rows([path], "json")


def test_load_rows_names_the_bad_file_past_the_peeked_rows(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl")
    bad = tmp_path / "late.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + "{not json}\n", encoding="utf-8")
    assert peek_rows([good, bad], "json", n=2) == ROWS[:2]
    with pytest.raises(DataError, match=r"late\.jsonl line 2 is not valid JSON"):
        _load([good, bad], "json", tmp_path)


def test_load_rows_names_files_with_different_columns(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl")
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=r"b\.jsonl has columns \['text'\] but .*a\.jsonl"):
        _load([a, b], "json", tmp_path)


def test_corrupt_parquet_and_arrow_are_data_errors(tmp_path: Path) -> None:
    for name, builder in [("x.parquet", "parquet"), ("x.arrow", "arrow")]:
        path = tmp_path / name
        path.write_bytes(b"this is not a columnar file")
        with pytest.raises(DataError, match=r"x\.(parquet|arrow) is not"):
            peek_rows([path], builder)


def test_split_name_on_plain_files_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl")
    with pytest.raises(DataError, match="dataset_split_name 'train_sft' only applies"):
        _load([path], "json", tmp_path, split_name="train_sft")


def test_peek_does_not_import_datasets_or_torch(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tuning.data.config import load, schema\nfrom tuning.data import sources\n"
        f"paths = sources.resolve_data_paths([{str(path)!r}], field='f')\n"
        "rows = sources.peek_rows(paths, sources.detect_builder(paths, None))\n"
        "assert rows, rows\n"
        "bad = sorted({'datasets', 'torch', 'transformers'} & set(sys.modules))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
