"""Save the final model so it appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any


def save_final_model(trainer: Any, target: str) -> Path:
    """trainer.save_model into a staging folder, then move it into place.

    A separate target is swapped in by renaming folders. When the target is output_dir itself
    (it holds checkpoints and logs), each staged file replaces its counterpart atomically.
    """
    target_path = Path(target).resolve()
    target_path.parent.mkdir(parents=True, exist_ok=True)
    # Same name on every rank: save_model may gather weights across processes.
    stage = target_path.parent / f".{target_path.name}.staging"
    main = trainer.is_world_process_zero()
    if main and stage.exists():
        shutil.rmtree(stage)
    try:
        _save_model(trainer, str(stage))
        if main:
            _move_into_place(stage, target_path)
    finally:
        if main and stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        # the other ranks go on only once the model is in place (they may read it next)
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    return target_path


def _move_into_place(stage: Path, target_path: Path) -> None:
    """A separate target is swapped in by renaming folders; an output_dir (it holds
    checkpoints and logs) gets each staged file replaced atomically."""
    if _holds_run_state(target_path):
        for item in stage.iterdir():
            destination = target_path / item.name
            if destination.is_dir():
                shutil.rmtree(destination)
            os.replace(item, destination)
        stage.rmdir()
        return
    previous = None
    if target_path.exists():
        previous = target_path.parent / f".{target_path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target_path, previous)
    os.replace(stage, target_path)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _save_model(trainer: Any, folder: str) -> None:
    """trainer.save_model, except under FSDP with a sharded state dict (fixtures/
    accelerate_fsdp2.yaml), where transformers 5 writes no weights at all: there every rank
    gathers the full state dict (accelerate does it for FSDP1 and FSDP2 alike) and the main
    process writes it, as transformers does for FULL_STATE_DICT."""
    if getattr(trainer, "is_fsdp_enabled", False):
        state_dict_type = str(trainer.accelerator.state.fsdp_plugin.state_dict_type)
        if "FULL_STATE_DICT" not in state_dict_type:
            state_dict = trainer.accelerator.get_state_dict(trainer.model)
            if trainer.args.should_save:
                trainer._save(folder, state_dict=state_dict)
            return
    trainer.save_model(folder)


def _holds_run_state(path: Path) -> bool:
    """True for an output_dir: replacing the folder would destroy checkpoints or logs."""
    if not path.is_dir():
        return False
    return any(
        child.name.startswith("checkpoint-") or child.suffix == ".jsonl" for child in path.iterdir()
    )
