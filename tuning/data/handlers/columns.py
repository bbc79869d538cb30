"""Column handlers: remove, select, rename, duplicate, and skipping rows with long columns."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, field_validator

from tuning.data.handlers.apply import column_names
from tuning.data.handlers.registry import (
    STAT_COLUMNS,
    HandlerArgs,
    HandlerContext,
    register_handler,
)
from tuning.errors import DataError, did_you_mean


def _require(dataset: Any, names: list[str], ctx: HandlerContext, handler: str) -> list[str]:
    present = column_names(dataset)
    missing = [name for name in names if name not in present]
    if missing:
        hint = did_you_mean(missing[0], present)
        raise DataError(
            f"dataset '{ctx.dataset_name}', handler {handler}: no column "
            f"{', '.join(repr(m) for m in missing)}.{hint} Columns at this step: "
            f"{', '.join(present)}."
        )
    return present


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class ColumnNamesArgs(HandlerArgs):
    column_names: list[str] = Field(min_length=1, description="Column names (one name or a list).")

    @field_validator("column_names", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return _as_list(value)

    def reads(self) -> list[str]:
        return list(self.column_names)


class RemoveColumnsArgs(ColumnNamesArgs):
    def columns_after(self, columns: list[str], removed: list[str] | None) -> list[str]:
        return [c for c in columns if c not in self.column_names]


class SelectColumnsArgs(ColumnNamesArgs):
    def columns_after(self, columns: list[str], removed: list[str] | None) -> list[str]:
        return [c for c in columns if c in self.column_names]


@register_handler("remove_columns", arguments=RemoveColumnsArgs, kind="dataset")
def remove_columns(dataset: Any, args: RemoveColumnsArgs, ctx: HandlerContext) -> Any:
    """Drop the named columns."""
    _require(dataset, args.column_names, ctx, "remove_columns")
    return dataset.remove_columns(args.column_names)


@register_handler(
    "select_columns", arguments=SelectColumnsArgs, kind="dataset", aliases=("retain_columns",)
)
def select_columns(dataset: Any, args: SelectColumnsArgs, ctx: HandlerContext) -> Any:
    """Keep only the named columns."""
    present = _require(dataset, args.column_names, ctx, "select_columns")
    keep = [c for c in present if c in args.column_names or c in STAT_COLUMNS]
    return dataset.select_columns(keep)


class RenameColumnsArgs(HandlerArgs):
    column_mapping: dict[str, str] = Field(
        min_length=1, description="Old column name -> new column name."
    )

    def reads(self) -> list[str]:
        return list(self.column_mapping)

    def columns_after(self, columns: list[str], removed: list[str] | None) -> list[str]:
        return [self.column_mapping.get(c, c) for c in columns]


@register_handler("rename_columns", arguments=RenameColumnsArgs, kind="dataset")
def rename_columns(dataset: Any, args: RenameColumnsArgs, ctx: HandlerContext) -> Any:
    """Rename columns."""
    _require(dataset, list(args.column_mapping), ctx, "rename_columns")
    return dataset.rename_columns(dict(args.column_mapping))


class DuplicateColumnsArgs(HandlerArgs):
    existing_column_name: str = Field(
        validation_alias=AliasChoices("existing_column_name", "old_column_name", "old_column"),
        description="Column to copy.",
    )
    new_column_name: str = Field(
        validation_alias=AliasChoices("new_column_name", "new_column"),
        description="Name of the copy; must not exist yet.",
    )

    def reads(self) -> list[str]:
        return [self.existing_column_name]

    def writes(self) -> list[str]:
        return [self.existing_column_name, self.new_column_name]


@register_handler("duplicate_columns", arguments=DuplicateColumnsArgs, batched_support=True)
def duplicate_columns(
    batch: dict[str, list[Any]], args: DuplicateColumnsArgs, ctx: HandlerContext
) -> dict[str, list[Any]]:
    """Copy one column to a new one, e.g. `input_ids` to `labels` to train on every token."""
    if args.existing_column_name not in batch:
        raise DataError(
            f"dataset '{ctx.dataset_name}', handler duplicate_columns: no column "
            f"'{args.existing_column_name}' to copy."
            f"{did_you_mean(args.existing_column_name, batch)} Columns at this step: "
            f"{', '.join(batch)}."
        )
    if args.new_column_name in batch:
        raise DataError(
            f"dataset '{ctx.dataset_name}', handler duplicate_columns: column "
            f"'{args.new_column_name}' already exists; pick another new_column_name or remove it "
            "first."
        )
    values = batch[args.existing_column_name]
    return {args.existing_column_name: values, args.new_column_name: list(values)}


class SkipLargeArgs(HandlerArgs):
    column_name: str = Field(description="Column whose length is checked (characters or tokens).")
    max_allowed_length: int = Field(
        ge=0,
        validation_alias=AliasChoices("max_allowed_length", "max_length"),
        description="Rows whose column is longer than this are dropped.",
    )

    def reads(self) -> list[str]:
        return [self.column_name]


@register_handler(
    "skip_samples_with_large_columns",
    arguments=SkipLargeArgs,
    kind="filter",
    batched_support=True,
    aliases=("skip_large_text", "skip_large_columns"),
)
def skip_samples_with_large_columns(
    batch: dict[str, list[Any]], args: SkipLargeArgs, ctx: HandlerContext
) -> list[bool]:
    """Keep rows whose column has at most `max_allowed_length` items (characters of a text,
    tokens of `input_ids`)."""
    if args.column_name not in batch:
        raise DataError(
            f"dataset '{ctx.dataset_name}', handler skip_samples_with_large_columns: no column "
            f"'{args.column_name}'.{did_you_mean(args.column_name, batch)} Columns at this step: "
            f"{', '.join(batch)}."
        )
    keep = []
    for value in batch[args.column_name]:
        if value is None:
            raise DataError(
                f"dataset '{ctx.dataset_name}': a row has no value in column "
                f"'{args.column_name}', so its length cannot be checked. Fix or drop that row."
            )
        keep.append(len(value) <= args.max_allowed_length)
    return keep
