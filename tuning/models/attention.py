"""Which attention implementation a run uses: what the user asked, a fallback chain decided at
plan time (packages, GPU, the `kernels` version transformers needs), finalised at load.

`--flash_attn_implementation` takes what transformers 5 accepts for `attn_implementation`:
flash_attention_2, flash_attention_3, sdpa, eager, flex_attention, or a hub kernel
`owner/name[@revision][:function]` (e.g. kernels-community/vllm-flash-attn3, needs the `kernels`
extra and a CUDA GPU). With `--use_flash_attn true` (fms's default) a kernel that cannot run
falls back as fms documents: asked -> flash_attention_2 -> sdpa, with one warning naming what
was asked, what is used and why. Imports nothing heavy.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import ConfigError
from tuning.registry import Registry

logger = logging.getLogger(__name__)

FA3_HUB_KERNEL = "kernels-community/flash-attn3"
_HUB_KERNEL = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?(:\w+)?$")


@dataclass(frozen=True)
class AttentionInfo:
    """One attention implementation transformers accepts, and what it needs here."""

    name: str
    doc: str
    package: str | None = None  # import name that must be present
    needs_gpu: bool = False
    aliases: tuple[str, ...] = ()


ATTENTION: Registry[AttentionInfo] = Registry("attention implementation")
for _info in (
    AttentionInfo(
        "flash_attention_2",
        "flash-attention 2 (pip install 'tuneforge[flash-attn]'); fms's default.",
        package="flash_attn",
        needs_gpu=True,
        aliases=("fa2",),
    ),
    AttentionInfo(
        "flash_attention_3",
        "flash-attention 3 (flash_attn_interface), Hopper GPUs.",
        package="flash_attn_interface",
        needs_gpu=True,
    ),
    AttentionInfo("sdpa", "torch's scaled_dot_product_attention; the end of the fallback chain."),
    AttentionInfo("eager", "plain matrix products; for architectures without sdpa (gpt-oss)."),
    AttentionInfo(
        "flex_attention", "torch flex_attention (no CPU backward in torch).", needs_gpu=True
    ),
):
    ATTENTION.add(_info)
# Implementations that keep packed sequences apart. Flash kernels use cu_seq_lens; since
# transformers 5, sdpa/eager/flex build a block-diagonal mask from packed position_ids when no
# attention_mask and no cache is given (training). tests/unit/training/test_collators.py proves it.
BOUNDARY_AWARE = {"flash_attention_2", "flash_attention_3", "sdpa", "eager", "flex_attention"}
# fa3 is our short name for the hub kernel (not transformers' flash_attention_3)
_HUB_ALIASES = {"fa3": FA3_HUB_KERNEL}


def is_hub_kernel(name: str) -> bool:
    return "/" in name and bool(_HUB_KERNEL.match(name))


def keeps_sequences_apart(name: str) -> bool:
    """Whether padding-free rows are safe with this implementation (hub kernels are flash)."""
    return name in BOUNDARY_AWARE or is_hub_kernel(name)


def normalise(value: str | None) -> str:
    """The implementation a flag value names (aliases resolved); ValueError when it names none."""
    name = _HUB_ALIASES.get(value or "", value or "flash_attention_2")
    if is_hub_kernel(name):
        return name
    try:
        return ATTENTION.resolve(name).name
    except ConfigError as exc:
        raise ValueError(
            f"--flash_attn_implementation: {exc} Or a hub kernel "
            "'owner/name[@revision][:function]' (e.g. kernels-community/vllm-flash-attn3), or fa3."
        ) from None


def _transformers_pin(package: str) -> str | None:
    """The version range transformers requires for `package`, read without importing it."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    table = Path(next(iter(spec.submodule_search_locations))) / "dependency_versions_table.py"
    try:
        tree = ast.parse(table.read_text(encoding="utf-8"))
    except OSError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            deps = ast.literal_eval(node)
            return deps.get(package)
    return None


def _kernels_problem() -> str | None:
    """Why hub kernels cannot load: `kernels` missing, or outside the range transformers needs."""
    if importlib.util.find_spec("kernels") is None:
        return "the `kernels` package is not installed (pip install 'tuneforge[kernels]')"
    pin = _transformers_pin("kernels")
    if not pin:
        return None
    from packaging.requirements import Requirement

    installed = importlib.metadata.version("kernels")
    if installed not in Requirement(pin).specifier:
        return f"kernels {installed} is installed but transformers needs {pin}"
    return None


def unavailable(name: str, gpus: bool) -> str | None:
    """Why `name` cannot run here, or None (decided without importing torch)."""
    reasons = []
    if is_hub_kernel(name):
        reasons += [r for r in [_kernels_problem()] if r]
    else:
        info = ATTENTION.resolve(name)
        if info.package and importlib.util.find_spec(info.package) is None:
            extra = " (pip install 'tuneforge[flash-attn]')" if info.package == "flash_attn" else ""
            reasons.append(f"{info.package} is not installed{extra}")
    if _needs_gpu(name) and not gpus:
        reasons.append("no CUDA GPU is visible")
    return "; ".join(reasons) or None


def _needs_gpu(name: str) -> bool:
    return is_hub_kernel(name) or ATTENTION.resolve(name).needs_gpu


@dataclass(frozen=True)
class AttentionPlan:
    """What was asked, the implementations to try in order at load, and why the ones before
    them cannot run (said once, at load, where the choice is final)."""

    asked: str
    chain: tuple[str, ...]
    explicit: bool = False  # the user named it (--flash_attn_implementation)
    reasons: tuple[str, ...] = ()

    @property
    def chosen(self) -> str:
        return self.chain[0]


def plan_attention(
    use_flash_attn: bool, requested: str | None, explicit: bool, gpus: bool, sdpa_only: bool
) -> AttentionPlan:
    """The attention plan. ValueError for a name that is not an attention implementation."""
    asked = normalise(requested)
    if sdpa_only:  # context parallel; the launch rules refused explicit flash requests
        return AttentionPlan(asked, ("sdpa",), explicit)
    if not use_flash_attn:
        return AttentionPlan("sdpa", ("sdpa",), explicit)
    candidates = list(dict.fromkeys((asked, "flash_attention_2", "sdpa")))
    chain, reasons = [], []
    for name in candidates:
        reason = unavailable(name, gpus)
        if reason:
            reasons.append(f"{name}: {reason}")
        else:
            chain.append(name)
    return AttentionPlan(asked, tuple(chain), explicit, tuple(reasons))


def choose_attention(plan: AttentionPlan, cuda_available: bool, sdpa_supported: bool = True):
    """At load, the final choice: the first planned implementation the loaded torch can run (a
    GPU visible to the system may be unusable by a CPU build of torch), eager for architectures
    without sdpa. One warning says what was asked, what is used and why."""
    reasons = list(plan.reasons)
    chosen = "sdpa"
    for name in plan.chain:
        if _needs_gpu(name) and not cuda_available:
            reasons.append(f"{name}: torch sees no usable CUDA GPU")
            continue
        chosen = name
        break
    if chosen == "sdpa" and not sdpa_supported:
        reasons.append("sdpa: this model's architecture does not support it in transformers")
        chosen = "eager"
    if chosen != plan.asked:
        source = "--flash_attn_implementation" if plan.explicit else "use_flash_attn"
        logger.warning(
            "Attention: %s was asked (%s); %s is used because %s.",
            plan.asked,
            source,
            chosen,
            "; ".join(reasons),
        )
    return chosen
