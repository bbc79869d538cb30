"""Turn a sharded FSDP2 checkpoint (torch.distributed.checkpoint, "DCP") into a Hugging Face model.

FSDP2 with SHARDED_STATE_DICT saves what each rank holds: one `__<rank>_0.distcp` file per rank
plus a `.metadata` index, in the folder accelerate names `pytorch_model_fsdp_0` (model) next to
`optimizer_0` (optimizer), with every model key wrapped under "model" (accelerate's
`save_fsdp_model` calls `dcp.save({"model": state_dict}, ...)`). Nothing outside torch can read
that, so inference, evaluation and merging need a plain Hugging Face folder first.

`dcp_to_hf` is the converter the post-training tools share (their CLI lives with them, not
here). It reads the whole checkpoint in ONE process without a process group, checks every key
and shape against the model the base folder's config.json describes, and lets transformers itself
write the folder (`save_pretrained`): transformers decides which tied copy to drop and reverts any
in-memory weight renaming, so the result is exactly what `from_pretrained` expects.

torch and transformers are imported inside the functions: tuneforge's planning stage must never
import them (tests/unit/test_import_rules.py).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuning.errors import InternalError, UserError

# accelerate.utils.constants: FSDP_MODEL_NAME = "pytorch_model_fsdp", OPTIMIZER_NAME = "optimizer";
# the folders are f"{name}_{index}" and index 0 is the (only) model/optimizer of an SFT run.
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
FSDP_OPTIMIZER_DIR = "optimizer_0"
# The top-level key accelerate wraps each state dict in before dcp.save.
MODEL_KEY = "model"
OPTIMIZER_KEY = "optimizer"
DCP_METADATA_FILE = ".metadata"
GENERATION_CONFIG_FILE = "generation_config.json"
_SHOWN = 5  # keys named in an error message; the rest are counted


def dcp_to_hf(
    dcp_dir: str | os.PathLike[str],
    base_model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Write the model held by a sharded DCP checkpoint as a Hugging Face folder; return its path.

    Args:
        dcp_dir: the DCP folder itself (holds `.metadata` and `__<rank>_0.distcp` files), or a
            checkpoint folder holding accelerate's `pytorch_model_fsdp_0` (e.g. `checkpoint-500`).
        base_model_dir: the model training started from. Its config.json says which architecture
            the weights belong to; its generation_config.json, when present, is carried over.
        out_dir: where the model folder goes: config.json, generation_config.json and
            model.safetensors (or transformers' shards plus index for a very large model).
            The folder is staged beside `out_dir` and renamed into place, so a failed or
            interrupted conversion never leaves a half-written model behind.
        overwrite: replace an `out_dir` that already holds files. Off by default because the
            usual mistake is pointing `out_dir` at a folder that matters.
        trust_remote_code: passed to transformers for architectures defined in the base folder.

    Raises:
        UserError: a folder is missing or is not what it should be (not a DCP checkpoint, an
            optimizer checkpoint, no config.json), `out_dir` already holds files, or the
            checkpoint's keys or shapes do not match the base model (the first few are named).

    The whole state dict is read into CPU memory once (no second copy is made), so the machine
    needs about as much free RAM as the model's size in its saved dtype. DCP's `.metadata` is a
    pickle, like any torch checkpoint: convert only checkpoints you trust.
    """
    source = _find_dcp_folder(Path(dcp_dir))
    base = Path(base_model_dir)
    if not (base / "config.json").is_file():
        raise UserError(
            f"Base model folder '{base}' has no config.json: pass the folder of the model the "
            "training started from (it says which architecture the checkpoint's weights fit)."
        )
    target = Path(out_dir).resolve()
    _check_target(target, source=source, base=base.resolve(), overwrite=overwrite)

    top_key = _model_key_in(source)
    state_dict = _load_dcp(source, top_key)
    model = _model_with_weights(state_dict, base, source, trust_remote_code=trust_remote_code)
    return _write_atomically(model, base, target)


def _find_dcp_folder(path: Path) -> Path:
    """The folder holding `.metadata`: the path itself or accelerate's model folder inside it."""
    if (path / DCP_METADATA_FILE).is_file():
        return path
    if (path / FSDP_MODEL_DIR / DCP_METADATA_FILE).is_file():
        return path / FSDP_MODEL_DIR
    if not path.is_dir():
        raise UserError(f"Sharded checkpoint folder '{path}' does not exist.")
    raise UserError(
        f"'{path}' is not a sharded (torch.distributed.checkpoint) checkpoint: it holds no "
        f"'{DCP_METADATA_FILE}' file and no '{FSDP_MODEL_DIR}/{DCP_METADATA_FILE}'. Pass a "
        f"checkpoint-N folder saved with FSDP2 and SHARDED_STATE_DICT, or the '{FSDP_MODEL_DIR}' "
        "folder in it. A FULL_STATE_DICT checkpoint is a plain torch file and needs no conversion."
    )


def _check_target(target: Path, *, source: Path, base: Path, overwrite: bool) -> None:
    """Refuse targets whose replacement would destroy the inputs or someone's files."""
    source = source.resolve()
    for name, folder in (("base model folder", base), ("checkpoint folder", source)):
        if target == folder or folder.is_relative_to(target) or target.is_relative_to(folder):
            raise UserError(
                f"Output folder '{target}' overlaps the {name} '{folder}': write the converted "
                "model somewhere else."
            )
    if target.exists() and not target.is_dir():
        raise UserError(f"Output path '{target}' exists and is not a folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(
            f"Output folder '{target}' already holds files; choose an empty or new folder, or "
            "pass overwrite=True to replace it."
        )


def _model_key_in(source: Path) -> str | None:
    """Accelerate's "model" wrapper key when the checkpoint has one; None for a flat model dict.

    Reading only the metadata keeps a wrong folder (the optimizer's) from loading gigabytes.
    """
    paths = _checkpoint_paths(source)
    tops = {path[0] for path in paths}
    if MODEL_KEY in tops and any(len(path) > 1 for path in paths if path[0] == MODEL_KEY):
        return MODEL_KEY
    if OPTIMIZER_KEY in tops:
        sibling = source.parent / FSDP_MODEL_DIR
        hint = f" Use '{sibling}'." if (sibling / DCP_METADATA_FILE).is_file() else ""
        raise UserError(
            f"'{source}' holds optimizer state, not model weights: pass the model folder "
            f"'{FSDP_MODEL_DIR}' (or the checkpoint folder above it).{hint}"
        )
    return None


def _checkpoint_paths(source: Path) -> list[tuple[Any, ...]]:
    """Each stored entry as its path in the nested state dict that was saved."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(source)).read_metadata()
    except Exception as error:  # a truncated or foreign .metadata: several exception types
        raise UserError(
            f"Could not read the checkpoint index '{source / DCP_METADATA_FILE}': {error}. The "
            "checkpoint may be incomplete (interrupted while saving) or not a DCP checkpoint."
        ) from error
    planner_data = metadata.planner_data or {}
    return [tuple(planner_data.get(key, (key,))) for key in metadata.state_dict_metadata]


def _load_dcp(source: Path, top_key: str | None) -> dict[str, Any]:
    """The checkpoint's model entries as a plain {name: tensor} dict, read in this process only.

    `_load_state_dict(..., no_dist=True)` with `_EmptyStateDictLoadPlanner` is what torch's own
    `format_utils.dcp_to_torch_save` does (and accelerate's `merge_fsdp_weights`): it rebuilds
    the full tensors from every rank's shards without a process group, and `keys` limits the
    read to the model. Both names are private, so when a future torch moves them we fall back to
    the public `dcp_to_torch_save`, which costs a temporary copy on disk.
    """
    try:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    except ImportError:
        loaded = _load_dcp_via_torch_save(source)
    else:
        loaded = {}
        keys = {top_key} if top_key else None
        _load_state_dict(
            loaded,
            storage_reader=FileSystemReader(str(source)),
            planner=_EmptyStateDictLoadPlanner(keys=keys),
            no_dist=True,
        )
    return dict(loaded[top_key]) if top_key else loaded


def _load_dcp_via_torch_save(source: Path) -> dict[str, Any]:
    """Public-API route: DCP → one torch.save file → dict (weights_only, so no code runs)."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(prefix="dcp-to-hf-") as scratch:
        file = Path(scratch) / "model.pt"
        dcp_to_torch_save(str(source), str(file))
        return torch.load(file, map_location="cpu", weights_only=True)


def _model_with_weights(
    state_dict: dict[str, Any], base: Path, source: Path, *, trust_remote_code: bool
) -> Any:
    """The base architecture, built without memory (meta device), holding the checkpoint's tensors.

    Keys and shapes are checked first so a checkpoint of another model fails with the names that
    differ. Tied weights follow transformers' own rule (`tie_weights(missing_keys=...)`, as
    `from_pretrained` does): a checkpoint may hold both tied names or only one of them.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(base), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as error:
        raise UserError(
            f"Could not build a causal LM from '{base / 'config.json'}': {error}"
        ) from error

    expected = model.state_dict()
    tied = model.get_expanded_tied_weights_keys(all_submodels=True)
    missing = set(expected) - set(state_dict)
    # One name of each tied pair is enough: the other is the same tensor.
    partner = {**tied, **{source_key: target for target, source_key in tied.items()}}
    absent = sorted(k for k in missing if partner.get(k) not in state_dict)
    unexpected = sorted(set(state_dict) - set(expected))
    if absent or unexpected:
        raise UserError(_key_mismatch(source, base, absent, unexpected))
    wrong_shapes = [
        f"{key}: checkpoint {tuple(value.shape)}, model {tuple(expected[key].shape)}"
        for key, value in sorted(state_dict.items())
        if _is_tensor(value)
        and _is_tensor(expected[key])
        and tuple(value.shape) != tuple(expected[key].shape)
    ]
    if wrong_shapes:
        raise UserError(
            f"Checkpoint '{source}' does not fit the model in '{base}': shapes differ for "
            f"{_first(wrong_shapes)}. Pass the base model the training started from."
        )

    model.load_state_dict(state_dict, strict=False, assign=True)
    model.tie_weights(missing_keys=missing)
    still_empty = [k for k, v in model.state_dict().items() if _is_tensor(v) and v.is_meta]
    if still_empty:  # every key was checked above, so this is a bug, not a user mistake
        raise InternalError(f"Weights left unset after loading the checkpoint: {still_empty[:5]}")
    return model


def _key_mismatch(source: Path, base: Path, absent: list[str], unexpected: list[str]) -> str:
    parts = [f"Checkpoint '{source}' does not match the model in '{base}'."]
    if absent:
        parts.append(f"Missing from the checkpoint: {_first(repr(k) for k in absent)}.")
    if unexpected:
        parts.append(f"Not in the model: {_first(repr(k) for k in unexpected)}.")
    parts.append(
        "Pass the base model the training started from; a LoRA/PEFT checkpoint holds adapter "
        "weights and needs the adapter tools instead."
    )
    return " ".join(parts)


def _first(items: Iterable[str]) -> str:
    """The first few items, then how many more: enough to recognise the problem."""
    items = list(items)
    shown = ", ".join(items[:_SHOWN])
    more = len(items) - _SHOWN
    return f"{shown} (and {more} more)" if more > 0 else shown


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _write_atomically(model: Any, base: Path, target: Path) -> Path:
    """save_pretrained into a staging folder beside the target, then rename it into place.

    The same pattern as tuning/training/saving.py: readers see the old folder or the new one,
    never a folder with config.json but half the weights.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    stage = target.parent / f".{target.name}.staging-{tag}"
    previous = target.parent / f".{target.name}.old-{tag}"
    try:
        model.save_pretrained(str(stage))
        base_generation = base / GENERATION_CONFIG_FILE
        if base_generation.is_file():
            # The base folder's own file, not the one derived from config.json, so sampling
            # defaults (temperature, stop ids...) survive the conversion.
            shutil.copyfile(base_generation, stage / GENERATION_CONFIG_FILE)
        if target.exists():
            os.replace(target, previous)
        try:
            os.replace(stage, target)
        except OSError:
            if previous.exists():
                os.replace(previous, target)
            raise
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target
