"""dcp_to_hf: a sharded (DCP) checkpoint in accelerate's layout becomes a Hugging Face folder.

The checkpoints here are written by one process without a process group (DCP then saves as a
single rank); tests/e2e/test_fsdp2_cpu.py converts a real two-rank FSDP2 checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tuning.errors import UserError
from tuning.models.sharded import FSDP_MODEL_DIR, dcp_to_hf

REPO = Path(__file__).resolve().parents[3]
HF_FILES = {"config.json", "generation_config.json", "model.safetensors"}


def _save_dcp(state: dict, folder: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming ... a single process"
        dcp.save(state, checkpoint_id=str(folder))
    return folder


def _trained_state(model_dir: Path) -> dict:
    """The tiny model's weights, moved so they cannot be mistaken for the base model's."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        for index, parameter in enumerate(model.parameters()):
            parameter.add_(0.01 * (index + 1))
    return {key: value.clone() for key, value in model.state_dict().items()}


def _loaded_state(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).state_dict()


def _safetensors_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def _assert_equal_states(actual: dict, expected: dict) -> None:
    import torch

    assert actual.keys() == expected.keys()
    assert [k for k, v in expected.items() if not torch.equal(actual[k], v)] == []


@pytest.fixture(scope="module")
def trained(tiny_model_dir) -> dict:
    return _trained_state(tiny_model_dir)


@pytest.fixture()
def checkpoint(trained, tmp_path) -> Path:
    """checkpoint-7/pytorch_model_fsdp_0 as accelerate's save_fsdp_model writes it."""
    folder = tmp_path / "checkpoint-7"
    _save_dcp({"model": trained}, folder / FSDP_MODEL_DIR)
    return folder


@pytest.mark.parametrize("point_at", ["checkpoint folder", "model folder"])
def test_round_trip_gives_the_checkpoint_weights(
    point_at, checkpoint, trained, tiny_model_dir, tmp_path
):
    source = checkpoint if point_at == "checkpoint folder" else checkpoint / FSDP_MODEL_DIR
    assert {p.name for p in (checkpoint / FSDP_MODEL_DIR).iterdir()} == {
        ".metadata",
        "__0_0.distcp",
    }
    out = dcp_to_hf(source, tiny_model_dir, tmp_path / "hf")
    assert out == (tmp_path / "hf").resolve()
    assert {p.name for p in out.iterdir()} == HF_FILES
    assert (out / "generation_config.json").read_bytes() == (
        tiny_model_dir / "generation_config.json"
    ).read_bytes()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    _assert_equal_states(_loaded_state(out), trained)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-7", "hf"]  # no staging


def test_a_flat_model_checkpoint_converts_too(trained, tiny_model_dir, tmp_path):
    """torch's own examples save model.state_dict() with no "model" wrapper."""
    source = _save_dcp(dict(trained), tmp_path / "flat")
    out = dcp_to_hf(source, tiny_model_dir, tmp_path / "hf")
    _assert_equal_states(_loaded_state(out), trained)


def test_without_the_private_torch_loader_the_public_route_is_used(
    checkpoint, trained, tiny_model_dir, tmp_path, monkeypatch
):
    import torch.distributed.checkpoint.format_utils  # noqa: F401  (a later torch's own import)
    import torch.distributed.checkpoint.state_dict_loader as loader

    monkeypatch.delattr(loader, "_load_state_dict")  # as if a later torch moved it
    out = dcp_to_hf(checkpoint, tiny_model_dir, tmp_path / "hf")
    _assert_equal_states(_loaded_state(out), trained)


@pytest.fixture(scope="module")
def tied_base(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny architecture with tie_word_embeddings on (lm_head shares the embedding)."""
    base = tmp_path_factory.mktemp("tied-base")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    return base


@pytest.mark.parametrize(
    "keep",
    [
        {"model.embed_tokens.weight", "lm_head.weight"},  # what FSDP2's state dict holds
        {"model.embed_tokens.weight"},
        {"lm_head.weight"},
    ],
)
def test_tied_weights_are_written_once_as_transformers_writes_them(keep, tied_base, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(tied_base)))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reference = tmp_path / "reference"
    model.save_pretrained(str(reference))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tied = {"model.embed_tokens.weight", "lm_head.weight"}
    source = _save_dcp(
        {"model": {k: v for k, v in state.items() if k not in tied - keep}}, tmp_path / "ckpt"
    )

    out = dcp_to_hf(source, tied_base, tmp_path / "hf")
    assert _safetensors_keys(out) == _safetensors_keys(reference)
    assert "lm_head.weight" not in _safetensors_keys(out)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    _assert_equal_states(reloaded.state_dict(), state)


@pytest.mark.parametrize("make", ["missing", "empty", "junk files"])
def test_a_folder_that_is_not_a_checkpoint_is_named(make, tiny_model_dir, tmp_path):
    folder = tmp_path / "not-a-checkpoint"
    if make != "missing":
        folder.mkdir()
    if make == "junk files":
        (folder / "model.safetensors").write_bytes(b"\0" * 8)
    message = "does not exist" if make == "missing" else "not a sharded"
    with pytest.raises(UserError, match=rf"not-a-checkpoint' (is )?{message}"):
        dcp_to_hf(folder, tiny_model_dir, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_truncated_index_is_a_user_error(checkpoint, tiny_model_dir, tmp_path):
    (checkpoint / FSDP_MODEL_DIR / ".metadata").write_bytes(b"\x80\x04trunc")
    with pytest.raises(UserError, match=r"Could not read the checkpoint index .*\.metadata"):
        dcp_to_hf(checkpoint, tiny_model_dir, tmp_path / "hf")


def test_the_optimizer_folder_points_at_the_model_folder(trained, tiny_model_dir, tmp_path):
    import torch

    checkpoint = tmp_path / "checkpoint-7"
    _save_dcp({"model": trained}, checkpoint / FSDP_MODEL_DIR)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    _save_dcp({"optimizer": optimizer.state_dict()}, checkpoint / "optimizer_0")
    with pytest.raises(UserError, match=r"holds optimizer state.*pytorch_model_fsdp_0"):
        dcp_to_hf(checkpoint / "optimizer_0", tiny_model_dir, tmp_path / "hf")


def test_a_dropped_key_is_named(trained, tiny_model_dir, tmp_path):
    state = {k: v for k, v in trained.items() if k != "model.layers.1.mlp.up_proj.weight"}
    source = _save_dcp({"model": state}, tmp_path / "ckpt")
    with pytest.raises(
        UserError, match=r"Missing from the checkpoint: 'model\.layers\.1\.mlp\.up_proj\.weight'\."
    ):
        dcp_to_hf(source, tiny_model_dir, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing staged, nothing left


def test_a_renamed_key_is_named_both_ways(trained, tiny_model_dir, tmp_path):
    state = dict(trained)
    state["model.norm.scale"] = state.pop("model.norm.weight")
    source = _save_dcp({"model": state}, tmp_path / "ckpt")
    with pytest.raises(
        UserError,
        match=r"Missing from the checkpoint: 'model\.norm\.weight'\. "
        r"Not in the model: 'model\.norm\.scale'\.",
    ):
        dcp_to_hf(source, tiny_model_dir, tmp_path / "hf")


def test_many_unexpected_keys_are_counted_not_all_listed(trained, tiny_model_dir, tmp_path):
    state = {f"base_model.model.{k}": v for k, v in trained.items()}  # a PEFT-wrapped model
    source = _save_dcp({"model": state}, tmp_path / "ckpt")
    more = len(trained) - 5  # the first five are named, the rest counted
    with pytest.raises(
        UserError, match=rf"\(and {more} more\).*\(and {more} more\).*adapter tools"
    ):
        dcp_to_hf(source, tiny_model_dir, tmp_path / "hf")


def test_a_shape_mismatch_is_named(trained, tiny_model_dir, tmp_path):
    state = dict(trained)
    vocab, hidden = state["lm_head.weight"].shape
    state["lm_head.weight"] = state["lm_head.weight"][:10]
    source = _save_dcp({"model": state}, tmp_path / "ckpt")
    with pytest.raises(
        UserError,
        match=rf"lm_head\.weight: checkpoint \(10, {hidden}\), model \({vocab}, {hidden}\)",
    ):
        dcp_to_hf(source, tiny_model_dir, tmp_path / "hf")


def test_a_base_folder_without_config_is_named(checkpoint, tmp_path):
    with pytest.raises(UserError, match=r"'.*no-config' has no config\.json"):
        dcp_to_hf(checkpoint, tmp_path / "no-config", tmp_path / "hf")


def test_an_existing_output_is_kept_unless_overwrite(checkpoint, trained, tiny_model_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"already holds files.*overwrite=True"):
        dcp_to_hf(checkpoint, tiny_model_dir, out)
    assert (out / "precious.txt").read_text() == "keep me"

    dcp_to_hf(checkpoint, tiny_model_dir, out, overwrite=True)
    assert {p.name for p in out.iterdir()} == HF_FILES
    _assert_equal_states(_loaded_state(out), trained)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-7", "hf"]


def test_output_inside_an_input_is_refused(checkpoint, tiny_model_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    with pytest.raises(UserError, match=r"overlaps the base model folder"):
        dcp_to_hf(checkpoint, base, base, overwrite=True)
    with pytest.raises(UserError, match=r"overlaps the checkpoint folder"):
        dcp_to_hf(checkpoint, base, checkpoint / FSDP_MODEL_DIR / "hf")
    assert {p.name for p in base.iterdir()} == {p.name for p in tiny_model_dir.iterdir()}


def test_importing_the_converter_imports_nothing_heavy():
    code = (
        "import json, sys; import tuning.models.sharded; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'transformers', 'safetensors', 'accelerate'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
