"""Checkpoint files: the safetensors of a checkpoint directory, read and written.

The weights are ``model.safetensors``, or shards ``model-00001-of-0000N.safetensors`` with
``model.safetensors.index.json`` (the same index layout as Hugging Face), read lazily through
memory-mapped handles. Nothing but safetensors is read: a pickle checkpoint is refused, so
nothing in a checkpoint is ever executed. A save writes into a temporary directory next to the
target and renames it into place, so an interrupted save leaves no half-written checkpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from archcomposer.errors import CheckpointError

SPEC_FILE = "spec.yaml"
HF_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
#: Files a save replaces; anything else in an existing target directory (a tokenizer) is kept.
CHECKPOINT_FILES = {SPEC_FILE, HF_CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Loads of at least this many bytes show a progress line on stderr.
PROGRESS_MIN_BYTES = 1 << 30


# ---------------------------------------------------------------------------------------------
# reading


class TensorFiles:
    """The tensors of a checkpoint directory (one safetensors file or an index of shards), read
    lazily through memory-mapped ``safe_open`` handles."""

    def __init__(self, directory: Path):
        self.directory = directory
        index, single = directory / INDEX_FILE, directory / WEIGHTS_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a weight_map): "
                                      f"{exc}") from None
            self.file_of = {name: directory / file for name, file in weight_map.items()}
        elif single.is_file():
            self.file_of = None
            self._single = single
        else:
            raise CheckpointError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}")
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}
        if self.file_of is None:
            self.file_of = {name: single for name in self._open(single).keys()}
        for file in sorted(set(self.file_of.values())):
            if not file.is_file():
                raise CheckpointError(f"{directory / INDEX_FILE} names shard {file.name}, which does not exist")
        self.names = list(self.file_of)
        self._info = {}
        for file in sorted(set(self.file_of.values())):
            handle = self._open(file)
            for name in handle.keys():
                if self.file_of.get(name) == file:
                    sl = handle.get_slice(name)
                    self._info[name] = (tuple(sl.get_shape()), _DTYPES[sl.get_dtype()])
        absent = [n for n in self.names if n not in self._info]
        if absent:
            raise CheckpointError(f"{directory / INDEX_FILE} maps {len(absent)} tensor(s) to shards that do not "
                                  f"hold them: {', '.join(absent)}")

    def _open(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = self._stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
            except Exception as exc:  # safetensors raises its own error types for bad headers
                raise CheckpointError(f"{file}: not a readable safetensors file: {exc}") from None
        return self._handles[file]

    def __contains__(self, name: str) -> bool:
        return name in self._info

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._info[name][1]

    def nbytes(self, name: str) -> int:
        shape, dtype = self._info[name]
        return torch.Size(shape).numel() * dtype.itemsize

    def get(self, name: str) -> torch.Tensor:
        return self._open(self.file_of[name]).get_tensor(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def refuse_pickle(path: Path) -> None:
    found = [path] if path.is_file() else sorted(path.iterdir()) if path.is_dir() else []
    pickles = [p for p in found if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{pickles[0]} is a pickle checkpoint; archcomposer reads only safetensors, because unpickling can "
            f"execute arbitrary code. Convert it once, in an environment you trust, e.g.:\n"
            f"  python -c \"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{pickles[0].name}', weights_only=True), 'model.safetensors', "
            f"metadata={{'format': 'pt'}})\"\n"
            f"or load it with transformers and save_pretrained it (transformers writes safetensors)")


# ---------------------------------------------------------------------------------------------
# writing


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", size, flags=re.IGNORECASE)
        if match is None:
            raise CheckpointError(f"max_shard_size={size!r}: expected bytes or a size such as '500MB' or '5GB'")
        unit = (match.group(2) or "B").upper()
        scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
        value = int(float(match.group(1)) * scale)
    if value <= 0:
        raise CheckpointError(f"max_shard_size={size!r} must be positive")
    return value


def write_tensors(directory: Path, tensors: dict[str, torch.Tensor], max_shard_size: int,
                  metadata: dict[str, str], progress: Progress | None = None) -> None:
    """Write ``tensors`` as one safetensors file, or as shards of at most ``max_shard_size`` bytes
    with an index; ``progress`` advances as each file is written (safetensors writes a file at once)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous().cpu()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_FILE), metadata=metadata)
        _advance(progress, shards[0])
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
        _advance(progress, shard)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _advance(progress: Progress | None, shard: dict[str, torch.Tensor]) -> None:
    if progress is not None:
        progress.advance(sum(t.numel() * t.element_size() for t in shard.values()))


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a fresh directory beside ``target``, then rename it to ``target``."""
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target} exists and is not a directory")
    parent = target.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=parent))
    try:
        if target.is_dir():
            for item in target.iterdir():
                if item.name not in CHECKPOINT_FILES and not SHARD_PATTERN.fullmatch(item.name):
                    _copy(item, staging / item.name)
        write(staging)
        _fsync_tree(staging)
        if target.is_dir():
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _copy(source: Path, dest: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, dest, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, dest)


def _link_or_copy(source, dest) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _fsync_tree(directory: Path) -> None:
    for file in directory.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------
# progress


class Progress:
    """A one-line progress report on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int, *, enabled: bool):
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.done, self.last = 0, 0.0

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            sys.stderr.write(f"\r{self.label}: {100 * self.done // self.total:3d}% "
                             f"({self.done / 2**30:.2f}/{self.total / 2**30:.2f} GiB)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
