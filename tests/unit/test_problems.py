"""One message format and one pydantic-error translator for every layer."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from tuning.errors import ConfigError
from tuning.problems import Problems, numbered, translate


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(8, ge=1)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    items: list[Inner] = []
    column: str | None = Field(None, validation_alias=AliasChoices("column", "column_name"))


def _problems(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return translate(info.value, Outer, data)


def test_paths_are_the_users_keys_with_values_and_did_you_mean():
    found = _problems({"nme": "x", "items": [{"rank": 0}, {"rnak": 2}]})
    assert any(p.startswith("`nme`: unknown key (value 'x'). Did you mean 'name'?") for p in found)
    assert any(
        p.startswith("`items[0].rank`: Input should be greater than or equal to 1") for p in found
    )
    assert any(
        p.startswith("`items[1].rnak`: unknown key (value 2). Did you mean 'rank'?") for p in found
    )
    assert "`name`: is required but missing; add it." in found


def test_two_spellings_of_one_key_are_named():
    (problem,) = _problems({"name": "x", "column": "a", "column_name": "b"})
    assert "is another spelling of 'column'" in problem and "keep one" in problem


def test_one_problem_inline_several_numbered():
    assert numbered("The job", ["a."]) == "The job: a."
    assert numbered("The job", ["a.", "b."]) == "The job has 2 problems: (1) a. (2) b."
    collected = Problems()
    collected.add(None)
    collected.extend(["a.", "a.", "b."])
    with pytest.raises(ConfigError, match=r"^The job has 2 problems: \(1\) a\. \(2\) b\.$"):
        collected.raise_if_any()
