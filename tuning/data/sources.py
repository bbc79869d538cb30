"""Finding and reading data files.

Path resolution, format detection and `peek_rows` use only the standard library and pyarrow, so
planning can check every data path and the first rows of each file before `datasets` (and
certainly before torch) is imported. `load_rows` is the one place that imports `datasets`.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuning.errors import DataError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset

# builder name for each file extension; "saved" is a folder written by `save_to_disk`
EXTENSION_BUILDERS: dict[str, str] = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".txt": "text",
}
SUPPORTED_BUILDERS: tuple[str, ...] = ("json", "parquet", "arrow", "csv", "text")
SAVED = "saved"
_GLOB_CHARS = set("*?[")
_FORMATS_HELP = (
    "Supported formats: .json/.jsonl (JSON array or JSON Lines), .parquet, .arrow, .csv, .txt, "
    "or a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk."
)


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`.

    Both marker files are required for a Dataset so that a folder of JSON data that happens to
    hold a `state.json` is still read as data files.
    """
    if not path.is_dir():
        return False
    if (path / "dataset_dict.json").is_file():
        return True
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _data_files_in(folder: Path) -> list[Path]:
    """Data files and saved datasets under a folder, sorted; hidden entries are skipped."""
    found: list[Path] = []
    for current, dirs, files in os.walk(folder):
        here = Path(current)
        dirs.sort()
        keep = []
        for name in dirs:
            sub = here / name
            if name.startswith("."):
                continue
            if is_saved_dataset(sub):
                found.append(sub)
            else:
                keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in EXTENSION_BUILDERS:
                found.append(here / name)
    return sorted(found)


def _expand_glob(pattern: str) -> list[Path]:
    matches = []
    # glob's wildcards never match names starting with "." (hidden files stay out)
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_file() or is_saved_dataset(path):
            matches.append(path)
        elif path.is_dir():
            matches.extend(_data_files_in(path))
    return matches


def resolve_data_paths(paths: list[str], *, base_dir: Path | None = None, field: str) -> list[Path]:
    """Expand files, folders, globs and saved datasets into concrete paths, in a stable order.

    Relative entries are taken from `base_dir` (the data config's folder) so a shipped config
    runs from any working directory. `field` names the flag or key in error messages.
    """
    base = base_dir if base_dir is not None else Path.cwd()
    resolved: list[Path] = []
    for entry in paths:
        raw = os.path.expanduser(str(entry))
        full = Path(raw) if os.path.isabs(raw) else base / raw
        if full.exists() and (full.is_file() or is_saved_dataset(full)):
            found = [full]
        elif full.is_dir():
            found = _data_files_in(full)
            if not found:
                raise DataError(f"{field}: folder '{full}' contains no data files. {_FORMATS_HELP}")
        elif _GLOB_CHARS & set(raw):
            found = _expand_glob(str(full))
            if not found:
                raise DataError(
                    f"{field}: the pattern '{entry}' (resolved to '{full}') matched no data "
                    "files. Check the folder and the pattern."
                )
        else:
            hint = f" (resolved to '{full}')" if str(full) != str(entry) else ""
            raise DataError(
                f"{field}: data path '{entry}'{hint} does not exist. Fix the path; relative "
                "paths in a data config are relative to the config file's folder."
            )
        resolved.extend(p for p in found if p not in resolved)
    return resolved


def detect_builder(paths: list[Path], builder: str | None) -> str:
    """Pick the reader: the configured builder, or the one every file's extension agrees on."""
    saved = [p for p in paths if is_saved_dataset(p)]
    if builder is not None:
        if builder not in SUPPORTED_BUILDERS:
            raise DataError(
                f"builder '{builder}' is not supported.{did_you_mean(builder, SUPPORTED_BUILDERS)}"
                f" Use one of {', '.join(SUPPORTED_BUILDERS)}, or leave it unset to detect it."
            )
        if saved:
            raise DataError(
                f"'{saved[0]}' is a folder written by save_to_disk, which builder "
                f"'{builder}' cannot read. Remove the builder setting."
            )
        return builder
    if not paths:
        raise DataError("no data files were given.")
    kinds: dict[str, Path] = {}
    for path in paths:
        if path in saved:
            kind = SAVED
        else:
            kind = EXTENSION_BUILDERS.get(path.suffix.lower(), "")
            if not kind:
                raise DataError(
                    f"cannot tell the format of '{path}' from its extension "
                    f"'{path.suffix or '(none)'}'. {_FORMATS_HELP} Rename the file or set "
                    "`builder` in the data config."
                )
        kinds.setdefault(kind, path)
    if len(kinds) > 1:
        examples = ", ".join(f"'{p.name}' ({k})" for k, p in kinds.items())
        raise DataError(
            f"one dataset mixes data formats: {examples}. Put each format in its own dataset entry."
        )
    return next(iter(kinds))


# ---------------------------------------------------------------------------------------------
# peek: the first rows, without `datasets`


def _no_rows(path: Path) -> DataError:
    return DataError(f"{path} has no rows. Add data to it or remove it from the data paths.")


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSON array file or a JSON Lines file, whichever it is."""
    with open(path, encoding="utf-8-sig") as handle:
        text_start = ""
        while True:
            char = handle.read(1)
            if not char or not char.isspace():
                text_start = char
                break
        if not text_start:
            raise _no_rows(path)
        handle.seek(0)
        if text_start == "[":
            try:
                rows = json.load(handle)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                    f"{exc.colno}. Fix the file so it is one JSON array of objects, or use "
                    "JSON Lines (one object per line)."
                ) from exc
            if not rows:
                raise _no_rows(path)
            for index, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}: item {index} of the JSON array is {type(row).__name__}, not "
                        "an object. Each row must be an object of column: value."
                    )
                yield row
            return
        seen = False
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {lineno} is not valid JSON ({exc.msg}, column {exc.colno}). "
                    "In JSON Lines each line must be one complete JSON object; fix or remove "
                    "that line, or make the whole file one JSON array."
                ) from exc
            if not isinstance(row, dict):
                raise DataError(
                    f"{path} line {lineno} is {type(row).__name__}, not a JSON object. Each "
                    "line must be an object of column: value."
                )
            seen = True
            yield row
        if not seen:
            raise _no_rows(path)


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        seen = False
        for row in csv.DictReader(handle):
            seen = True
            yield dict(row)
        if not seen:
            raise _no_rows(path)


def _text_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        seen = False
        for line in handle:
            seen = True
            yield {"text": line.rstrip("\r\n")}
        if not seen:
            raise _no_rows(path)


def _parquet_rows(path: Path, n: int) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path} is not a readable parquet file: {exc}") from exc
    if parquet.metadata.num_rows == 0:
        raise _no_rows(path)
    for batch in parquet.iter_batches(batch_size=max(n, 1)):
        yield from batch.to_pylist()


def _arrow_rows(path: Path, *, required: bool = True) -> Iterator[dict[str, Any]]:
    """Rows of an Arrow IPC stream (what `datasets` writes), or of an IPC file as a fallback."""
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        try:
            reader = pa.ipc.open_stream(source)
            batches: Iterator[Any] = iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                file_reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid as exc:
                raise DataError(
                    f"{path} is not an Arrow IPC stream or file: {exc}. Write it with "
                    "pyarrow.ipc.new_stream or Dataset.save_to_disk."
                ) from exc
            batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        seen = False
        for batch in batches:
            for row in batch.to_pylist():
                seen = True
                yield row
        if required and not seen:
            raise _no_rows(path)


def _saved_split_dir(folder: Path, split_name: str | None) -> Path:
    """The folder holding the arrow files for one split of a saved Dataset or DatasetDict."""
    dict_file = folder / "dataset_dict.json"
    if not dict_file.is_file():
        return folder
    splits = list(json.loads(dict_file.read_text(encoding="utf-8")).get("splits", []))
    if split_name is None:
        if len(splits) == 1:
            return folder / splits[0]
        raise DataError(
            f"{folder} is a saved DatasetDict with splits {splits}; set dataset_split_name "
            "to the split to train on."
        )
    if split_name not in splits:
        raise DataError(
            f"{folder} has no split '{split_name}'.{did_you_mean(split_name, splits)} "
            f"Available splits: {', '.join(splits)}. Fix dataset_split_name."
        )
    return folder / split_name


def _saved_rows(folder: Path, split_name: str | None) -> Iterator[dict[str, Any]]:
    split_dir = _saved_split_dir(folder, split_name)
    shards = sorted(split_dir.glob("*.arrow"))
    if not shards:
        raise _no_rows(split_dir)
    for shard in shards:  # a shard may be empty; peek_rows checks the folder as a whole
        yield from _arrow_rows(shard, required=False)


def _rows(path: Path, builder: str, n: int, split_name: str | None) -> Iterator[dict[str, Any]]:
    try:
        if builder == "json":
            yield from _json_rows(path)
        elif builder == "csv":
            yield from _csv_rows(path)
        elif builder == "text":
            yield from _text_rows(path)
        elif builder == "parquet":
            yield from _parquet_rows(path, n)
        elif builder == "arrow":
            yield from _arrow_rows(path)
        elif builder == SAVED:
            yield from _saved_rows(path, split_name)
        else:
            raise DataError(
                f"builder '{builder}' is not supported.{did_you_mean(builder, SUPPORTED_BUILDERS)}"
                f" Use one of {', '.join(SUPPORTED_BUILDERS)}."
            )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}). Re-save it as UTF-8 "
            "or check that the builder matches the file."
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def peek_rows(
    paths: list[Path], builder: str, n: int = 5, *, split_name: str | None = None
) -> list[dict[str, Any]]:
    """The first `n` rows across `paths`, read without `datasets` so planning stays fast.

    Every file opened must have rows; files after the first `n` rows are not opened.
    """
    rows: list[dict[str, Any]] = []
    for path in paths:
        if len(rows) >= n:
            break
        produced = 0
        for row in _rows(Path(path), builder, n, split_name):
            produced += 1
            rows.append(row)
            if len(rows) >= n:
                break
        if produced == 0 and builder == SAVED:
            raise _no_rows(Path(path))
    return rows


# ---------------------------------------------------------------------------------------------
# load: the full dataset, with `datasets`


def _first_bad_file(paths: list[Path], builder: str) -> DataError | None:
    """Read each file ourselves to name the one that `datasets` choked on."""
    first_columns: tuple[Path, list[str]] | None = None
    for path in paths:
        try:
            columns: list[str] = []
            for row in _rows(path, builder, 1024, None):
                columns = columns or sorted(row)
        except DataError as exc:
            return exc
        if first_columns is None:
            first_columns = (path, columns)
        elif columns != first_columns[1]:
            return DataError(
                f"{path} has columns {columns} but {first_columns[0]} has {first_columns[1]}; "
                "files of one dataset must share their columns. Split them into separate "
                "datasets or fix the files."
            )
    return None


def _load_saved(
    paths: list[Path], split_name: str | None, streaming: bool
) -> Dataset | IterableDataset:
    import datasets

    parts = []
    for folder in paths:
        try:
            loaded = datasets.load_from_disk(str(folder))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot load the saved dataset {folder}: {exc}") from exc
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[_saved_split_dir(folder, split_name).name]
        parts.append(loaded)
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return dataset.to_iterable_dataset() if streaming else dataset


def load_rows(
    paths: list[Path],
    builder: str,
    *,
    split_name: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> Dataset | IterableDataset:
    """Load every row with `datasets` (an `IterableDataset` when streaming).

    `split_name` picks a split of a saved DatasetDict; plain files have only "train".
    """
    if builder == SAVED:
        return _load_saved(paths, split_name, streaming)
    if split_name not in (None, "train"):
        raise DataError(
            f"dataset_split_name '{split_name}' only applies to folders written by "
            f"DatasetDict.save_to_disk; {builder} files have a single split. Remove "
            "dataset_split_name or point data_paths at the saved folder."
        )
    if builder not in SUPPORTED_BUILDERS:
        raise DataError(
            f"builder '{builder}' is not supported.{did_you_mean(builder, SUPPORTED_BUILDERS)}"
            f" Use one of {', '.join(SUPPORTED_BUILDERS)}."
        )
    for path in paths:
        if path.is_file() and path.stat().st_size == 0:
            raise _no_rows(path)  # datasets would raise a bare StopIteration
    import datasets
    import pyarrow as pa
    from datasets.exceptions import DatasetGenerationError

    try:
        return datasets.load_dataset(
            builder,
            data_files=[str(p) for p in paths],
            split="train",
            streaming=streaming,
            cache_dir=cache_dir,
        )
    except (DatasetGenerationError, pa.ArrowException, ValueError, OSError, StopIteration) as exc:
        culprit = _first_bad_file(paths, builder)
        if culprit is not None:
            raise culprit from exc
        cause = exc.__cause__ or exc
        names = ", ".join(str(p) for p in paths)
        detail = " ".join(str(cause).split())
        raise DataError(
            f"datasets could not read {builder} data from {names}: "
            f"{type(cause).__name__}: {detail}. Check that the files are valid {builder} and "
            "share the same columns."
        ) from exc
