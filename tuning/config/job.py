"""One validated, immutable JobConfig built from the parsed flag values.

Cross-flag rules live here so every problem is reported together, before anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import ValidationError

from tuning.config.schema import (
    LEGACY_TRAINING_FLAGS,
    SECTIONS,
    AccelerationArgs,
    DataArgs,
    ModelArgs,
    PeftArgs,
    TrackerArgs,
    TrainingExtras,
    all_flags,
)
from tuning.errors import ConfigError
from tuning.problems import Loc, dotted, numbered, translate

# Keys whose values are credentials. Only these are redacted: a resolved config must stay a
# job that can be fed back (tokenizer_name_or_path or num_virtual_tokens are not secrets).
SECRET_KEYS = frozenset({"hub_token", "hub_private_token"})
_SECRET_SUFFIXES = ("_api_key", "_apikey", "_password", "_secret", "_access_token")
_URL_SECRETS = frozenset(
    {"token", "access_token", "api_key", "apikey", "key", "password", "secret"}
)


@dataclass(frozen=True)
class JobConfig:
    """Everything one run needs, typed and validated. Never mutated after creation."""

    model: ModelArgs
    data: DataArgs
    training: TrainingExtras
    peft: PeftArgs
    acceleration: AccelerationArgs
    tracking: TrackerArgs
    hf_training: Mapping[str, Any] = field(default_factory=dict)
    explicitly_set: frozenset[str] = frozenset()
    notices: tuple[str, ...] = ()
    # transformers-4 flags transformers 5 dropped; the plan gives each its meaning or refuses it
    legacy: Mapping[str, Any] = field(default_factory=dict)

    @property
    def padding_free(self) -> bool:
        return bool(self.training.padding_free)

    def resolved(self) -> dict[str, Any]:
        """The full configuration as plain JSON, secrets redacted (saved into output_dir)."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            out.update(getattr(self, name).model_dump(mode="json"))
        out.update(self.hf_training)
        out.update(self.legacy)
        return {key: _redact(key, value) for key, value in sorted(out.items())}


def _redact(key: str, value: Any) -> Any:
    """Hide credentials, never ordinary settings (tokenizer_name_or_path stays readable)."""
    if value is None:
        return None
    if key in SECRET_KEYS or key.endswith(_SECRET_SUFFIXES):
        return "***"
    if isinstance(value, str) and "://" in value:
        return _redact_url(value)
    return value


def _redact_url(url: str) -> str:
    """A password in the user part, or a credential in the query, of a URL."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = "&".join(
        f"{name}=***" if name.lower() in _URL_SECRETS else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _flag_path(loc: Loc) -> str:
    return f"--{dotted(loc)}"


def build_job_config(values: Mapping[str, Any]) -> JobConfig:
    """Validate parsed values into a JobConfig (types and value ranges of each flag), reporting
    every problem in one ConfigError. Combinations are the plan's job (tuning/plan.py)."""
    flags = all_flags()
    by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    hf_training: dict[str, Any] = {}
    notices: list[str] = []
    legacy: dict[str, Any] = {}
    for name, value in values.items():
        spec = flags[name]
        if spec.section in by_section:
            by_section[spec.section][name] = value
        elif spec.section == "hf":
            hf_training[name] = value
        elif spec.section == "legacy":
            target = LEGACY_TRAINING_FLAGS[name]
            if target:
                hf_training[target] = value
                notices.append(f"--{name} is the older spelling of --{target}; using it as such.")
            else:
                legacy[name] = value
    problems: list[str] = []
    sections = {}
    for name, model in SECTIONS.items():
        try:
            sections[name] = model(**by_section[name])
        except ValidationError as exc:
            problems.extend(translate(exc, model, by_section[name], path=_flag_path))
            sections[name] = model.model_construct(**by_section[name])
    job = JobConfig(
        **sections,
        hf_training=hf_training,
        explicitly_set=frozenset(values),
        notices=tuple(notices),
        legacy=legacy,
    )
    if problems:
        raise ConfigError(numbered("The configuration", problems))
    return job
