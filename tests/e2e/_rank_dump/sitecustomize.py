"""Test-only probe for multi-process runs (tests/e2e/test_multiprocess.py).

Python imports `sitecustomize` at start-up from the first folder on sys.path that has one; the
test puts this folder on PYTHONPATH of `accelerate launch`, so every process of the launch loads
it. It does nothing unless TUNEFORGE_TEST_RANK_DUMP names a folder and the process is a launched
rank (RANK is set: the launcher and torchrun's agent are left alone). In a rank it records:

- every change under TUNEFORGE_TEST_WATCH that Python's audit hooks report (files opened for
  writing, renames, mkdir, removals): which rank wrote which file;
- through a wrapper on transformers' Trainer.train and Trainer.training_step: a digest of the
  model weights when train() starts and when it returns, and the rows of every batch it trained
  on (token ids, padding dropped);

and writes them to <TUNEFORGE_TEST_RANK_DUMP>/rank<RANK>.json when the process exits.
tuning/ knows nothing of this; nothing is imported until transformers.trainer is.
"""

from __future__ import annotations

import os

_DUMP = os.environ.get("TUNEFORGE_TEST_RANK_DUMP")
_RANK = os.environ.get("RANK")

if _DUMP and _RANK is not None:
    import atexit
    import hashlib
    import importlib.abc
    import importlib.machinery
    import json
    import sys

    _RECORD: dict = {
        "rank": int(_RANK),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "writes": [],
        "trains": [],
    }
    _WATCH = os.environ.get("TUNEFORGE_TEST_WATCH")
    _WATCH = os.path.join(os.path.abspath(_WATCH), "") if _WATCH else None
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _PATH_EVENTS = {"os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"}

    def _under_watch(path) -> str | None:
        """`path` relative to the watched folder, or None when it is elsewhere."""
        try:
            full = os.path.abspath(os.fsdecode(os.fspath(path)))
        except TypeError:  # a file descriptor
            return None
        if full.startswith(_WATCH):
            return full[len(_WATCH) :]
        return "." if full == _WATCH[:-1] else None

    def _audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            where = _under_watch(path) if writing else None
            if where is not None:
                _RECORD["writes"].append(["open", where])
        elif event == "os.rename":
            src, dst = _under_watch(args[0]), _under_watch(args[1])
            if src is not None or dst is not None:
                _RECORD["writes"].append(["rename", src, dst])
        elif event in _PATH_EVENTS:
            where = _under_watch(args[0])
            if where is not None:
                _RECORD["writes"].append([event, where])

    def _digest(model) -> str:
        import torch

        sha = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            sha.update(name.encode())
            sha.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return sha.hexdigest()

    def _rows(inputs) -> list[list[int]]:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        rows = []
        for i in range(ids.shape[0]):
            row = ids[i] if mask is None else ids[i][mask[i].bool()]
            rows.append([int(t) for t in row])
        return rows

    def _patch(trainer_class) -> None:
        train, training_step = trainer_class.train, trainer_class.training_step

        def probed_train(self, *args, **kwargs):
            entry = {"weights_before": _digest(self.model), "batches": []}
            _RECORD["trains"].append(entry)
            self._tf_probe = entry
            result = train(self, *args, **kwargs)
            entry["weights_after"] = _digest(self.model)
            entry["global_step"] = int(self.state.global_step)
            return result

        def probed_training_step(self, model, inputs, *args, **kwargs):
            entry = getattr(self, "_tf_probe", None)
            if entry is not None:
                entry["batches"].append(_rows(inputs))
            return training_step(self, model, inputs, *args, **kwargs)

        trainer_class.train = probed_train
        trainer_class.training_step = probed_training_step

    class _TrainerFinder(importlib.abc.MetaPathFinder):
        """Patches transformers.trainer.Trainer right after that module is executed."""

        def find_spec(self, name, path, target=None):
            if name != "transformers.trainer":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                _patch(module.Trainer)

            spec.loader.exec_module = exec_module
            return spec

    def _dump() -> None:
        os.makedirs(_DUMP, exist_ok=True)
        target = os.path.join(_DUMP, f"rank{_RANK}.json")
        with open(target + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(_RECORD, handle)
        os.replace(target + ".tmp", target)

    sys.meta_path.insert(0, _TrainerFinder())
    if _WATCH:
        sys.addaudithook(_audit)
    atexit.register(_dump)
