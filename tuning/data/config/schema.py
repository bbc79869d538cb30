"""The data config (fms-hf-tuning's `--data_config_path` YAML), as a strict pydantic schema.

fms accepts any key and ignores what it does not know; a misspelt key then silently runs with
defaults. Here every level forbids unknown keys, and `load_data_config` reports every problem
at once, with the key path as the user wrote it, the value found and the fix.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from tuning.data.sources import SUPPORTED_BUILDERS
from tuning.errors import ConfigError, did_you_mean
from tuning.problems import Loc, NestedProblems

SUM_TOLERANCE = 1e-6


TEMPLATE_KEYS = ("chat_template", "chat_template_path", "chat_template_base64")
# Older fms dataset-level keys -> the handler that does the same, and its argument
OLDER_DATASET_KEYS = {
    "rename_columns": ("rename_columns", "column_mapping"),
    "retain_columns": ("select_columns", "column_names"),
}
logger = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class HandlerArguments(_Strict):
    """What goes to `datasets.map`/`filter` for one handler (fms's `arguments`)."""

    fn_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the handler itself (column names, template, ...).",
    )
    batched: bool = Field(False, description="Call the handler on batches of rows.")
    batch_size: int | None = Field(
        None, ge=1, description="Rows per batch when `batched`; unset uses datasets' 1000."
    )
    remove_columns: list[str] | Literal["all"] | None = Field(
        None,
        description='Columns to drop after the handler: a list, one name, or "all" (every '
        "column the dataset had before the handler).",
    )
    num_proc: int | None = Field(
        None, ge=1, description="Worker processes for this handler; unset runs in-process."
    )

    @field_validator("remove_columns", mode="before")
    @classmethod
    def _one_column_is_a_list(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all":
            return [value]
        if value is not None and not (
            value == "all" or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise ValueError('must be a list of column names, one column name, or "all"')
        return value


class HandlerSpec(_Strict):
    """One data handler step; names and fn_kwargs are checked by the handler registry."""

    name: str = Field(description="Registered handler name, e.g. tokenize_and_apply_input_masking.")
    arguments: HandlerArguments = Field(
        default_factory=HandlerArguments, description="Arguments for datasets map/filter."
    )


class SplitSpec(_Strict):
    """Fractions of one dataset used for training and validation (the rest is unused)."""

    train: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of rows for training; omitted means 0."
    )
    validation: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of rows for validation; omitted means 0."
    )

    @model_validator(mode="after")
    def _sum_at_most_one(self) -> SplitSpec:
        total = self.train + self.validation
        if total > 1.0 + SUM_TOLERANCE:
            raise ValueError(f"train + validation is {total:g}, more than 1; lower one of them")
        if total <= 0.0:
            raise ValueError(
                "train and validation are both 0, so this dataset gives no rows; set one of them"
            )
        return self


class DatasetSpec(_Strict):
    """One source of rows: files, how to read them and the handlers to run on them."""

    name: str = Field(min_length=1, description="Unique name, used in logs and reports.")
    data_paths: list[str] = Field(
        min_length=1,
        description="Files, folders, globs or save_to_disk folders; relative to the config file.",
    )
    builder: str | None = Field(
        None,
        description=f"Reader: one of {', '.join(SUPPORTED_BUILDERS)}; unset detects it from "
        "the file extensions.",
    )
    sampling: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Share of this dataset in the training mix; all given shares must sum to 1.",
    )
    split: SplitSpec | None = Field(None, description="Train/validation fractions of this dataset.")
    dataset_split_name: str | None = Field(
        None, description='Split to read from a saved DatasetDict, e.g. "train_sft".'
    )
    shuffle: bool | None = Field(
        None,
        description="Shuffle this dataset's rows with the seed before splitting. Unset: "
        "shuffled when split gives part of the rows to validation or leaves some unused (as "
        "fms does), else kept in order. false: splits take contiguous rows.",
    )

    data_handlers: list[HandlerSpec] = Field(
        default_factory=list, description="Handlers applied in order."
    )
    rename_columns: dict[str, str] | None = Field(
        None,
        description="Older fms shape, kept so old configs run: {old: new} column renames done "
        "before data_handlers. Prefer a rename_columns handler.",
    )
    retain_columns: list[str] | None = Field(
        None,
        description="Older fms shape, kept so old configs run: the columns to keep, after "
        "rename_columns and before data_handlers. Prefer a select_columns handler.",
    )

    @field_validator("data_paths", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("builder")
    @classmethod
    def _known_builder(cls, value: str | None) -> str | None:
        if value is not None and value not in SUPPORTED_BUILDERS:
            raise ValueError(
                f"unknown builder.{did_you_mean(value, SUPPORTED_BUILDERS)} Use one of "
                f"{', '.join(SUPPORTED_BUILDERS)}, or remove it to detect the format"
            )
        return value

    def shuffled(self) -> bool:
        """Whether the rows are shuffled: the explicit setting, else only for a real split."""
        if self.shuffle is not None:
            return self.shuffle
        return self.split is not None and self.split.train < 1.0

    def trains(self) -> bool:
        """Whether any of this dataset's rows go to training."""
        return self.split is None or self.split.train > 0.0


def _decode_base64(text: str) -> str:
    raw = "".join(text.split())
    return base64.b64decode(raw, validate=True).decode("utf-8")


class DataProcessorSpec(_Strict):
    """How the datasets are combined (fms's `dataprocessor`), plus tuneforge's audit settings."""

    type: Literal["default", "odm"] = Field(
        "default", description='"default"; "odm" (online data mixing) is not built yet.'
    )
    streaming: bool = Field(False, description="Stream rows instead of loading them all.")
    seed: int = Field(42, description="Seed for sampling, shuffling and splitting.")
    sampling_stopping_strategy: Literal["all_exhausted", "first_exhausted"] = Field(
        "all_exhausted",
        description="When sampling stops: after every dataset is used up (oversampling the "
        "small ones) or as soon as the first one is.",
    )
    chat_template: str | None = Field(None, description="Jinja chat template text.")
    chat_template_path: str | None = Field(
        None, description="File holding the chat template; relative to the config file."
    )
    chat_template_base64: str | None = Field(
        None, description="Chat template as base64 of UTF-8 text."
    )
    audit_sample_size: int = Field(
        64, ge=0, description="Rows per dataset whose loss mask is cross-checked by the audit."
    )
    max_zero_label_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Largest fraction of rows with no trained token before the run aborts.",
    )
    odm: dict[str, Any] | None = Field(
        None, description="Online data mixing settings (accepted so fms configs parse)."
    )

    @field_validator("chat_template_base64")
    @classmethod
    def _valid_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _decode_base64(value)
            except (binascii.Error, ValueError) as exc:
                reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
                raise ValueError(
                    f"does not decode as base64 of UTF-8 text ({reason}). Encode the template "
                    "with `base64 -w0 template.jinja`, or use chat_template / "
                    "chat_template_path instead"
                ) from None
        return value

    @model_validator(mode="after")
    def _one_template(self) -> DataProcessorSpec:
        given = [key for key in TEMPLATE_KEYS if getattr(self, key) is not None]
        if len(given) > 1:
            raise NestedProblems(
                [
                    (
                        (given[1],),
                        f"only one chat template may be given, but {' and '.join(given)} are "
                        "both set; keep one",
                        getattr(self, given[1]),
                    )
                ]
            )
        return self


class DataConfig(_Strict):
    """The whole data config file."""

    dataprocessor: DataProcessorSpec = Field(
        default_factory=DataProcessorSpec, description="How datasets are combined."
    )
    datasets: list[DatasetSpec] = Field(min_length=1, description="The datasets to train on.")
    source_path: Path | None = Field(
        None, exclude=True, description="The file this config was read from (set by the loader)."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> DataConfig:
        problems: list[tuple[Loc, str, Any]] = []
        seen: dict[str, int] = {}
        for index, dataset in enumerate(self.datasets):
            if dataset.name in seen:
                problems.append(
                    (
                        ("datasets", index, "name"),
                        f"repeats the name of datasets[{seen[dataset.name]}]; give each "
                        "dataset a unique name",
                        dataset.name,
                    )
                )
            seen.setdefault(dataset.name, index)
        if self.datasets and not any(d.trains() for d in self.datasets):
            problems.append(
                (
                    ("datasets",),
                    "no dataset gives training rows (every split has train: 0); give one "
                    "dataset a training share",
                    None,
                )
            )
        sampled = [(i, d) for i, d in enumerate(self.datasets) if d.sampling is not None]
        if sampled:
            for index, dataset in enumerate(self.datasets):
                if dataset.sampling is None and dataset.trains():
                    problems.append(
                        (
                            ("datasets", index, "sampling"),
                            "is missing while other datasets set sampling; every dataset "
                            "that trains needs a sampling share (a dataset whose split has "
                            "train 0 may omit it)",
                            None,
                        )
                    )
            total = sum(d.sampling or 0.0 for _, d in sampled)
            if abs(total - 1.0) > SUM_TOLERANCE:
                shares = " + ".join(f"{d.sampling:g}" for _, d in sampled)
                problems.append(
                    (
                        ("datasets",),
                        f"sampling shares must sum to 1, but {shares} = {total:g}; adjust them",
                        total,
                    )
                )
        if problems:
            raise NestedProblems(problems)
        return self

    def resolved_chat_template(self) -> str | None:
        """The chat template text, from whichever of the three keys was given."""
        spec = self.dataprocessor
        if spec.chat_template is not None:
            return spec.chat_template
        if spec.chat_template_base64 is not None:
            return _decode_base64(spec.chat_template_base64)
        if spec.chat_template_path is None:
            return None
        path = Path(spec.chat_template_path).expanduser()
        if not path.is_absolute() and self.source_path is not None:
            path = self.source_path.parent / path
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            where = f" in {self.source_path}" if self.source_path else ""
            raise ConfigError(
                f"dataprocessor.chat_template_path{where}: cannot read '{path}' ({exc}). Fix "
                "the path; a relative path is relative to the config file's folder."
            ) from exc


# ---------------------------------------------------------------------------------------------
# loading and error reporting
