"""Checkpoints: load a Hugging Face model directory or our own, save ours, export to Hugging Face.

Our format is a directory with ``spec.yaml`` (the spec) and ``model.safetensors`` (tensors under
our parameter names), or shards ``model-00001-of-0000N.safetensors`` with
``model.safetensors.index.json`` (the same index layout as Hugging Face). A Hugging Face
directory has ``config.json`` instead of ``spec.yaml``; the family plugin whose
``hf_model_types`` holds its ``model_type`` translates config and tensor names (see
``archcomposer.family``). Nothing but safetensors is read: a pickle checkpoint is refused, so
nothing in a checkpoint is ever executed.

Loading builds the model with its parameters on the meta device (nothing allocated), reads the
tensors one at a time from the memory-mapped files into a state dict and assigns them, so the
weights are held once. Saving writes into a temporary directory next to the target and renames
it into place, so an interrupted save leaves no half-written checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from archcomposer.errors import CheckpointError, SpecError
from archcomposer.family import Family, TensorMap
from archcomposer.model import ComposedModel
from archcomposer.registry import get_registry
from archcomposer.spec import ModelSpecBase
from archcomposer.specfile import load_spec

SPEC_FILE = "spec.yaml"
HF_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
#: Files a save replaces; anything else in an existing target directory (a tokenizer) is kept.
CHECKPOINT_FILES = {SPEC_FILE, HF_CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_MAX_SHARD_SIZE = "5GB"
#: Loads of at least this many bytes show a progress line on stderr.
PROGRESS_MIN_BYTES = 1 << 30
FORMATS = ("archcomposer", "hf")


# ---------------------------------------------------------------------------------------------
# loading


def from_pretrained(path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                    device: str | torch.device | None = None, progress: bool | None = None) -> ComposedModel:
    """Load a checkpoint directory: ours (``spec.yaml``) or Hugging Face's (``config.json``).

    ``dtype`` casts floating-point weights as they are read (default: as stored); ``device`` is
    where they go (default: CPU). ``progress`` shows a progress line on stderr (default: for
    loads of 1 GiB or more). Raises ``CheckpointError`` for a pickle checkpoint, an unknown
    ``model_type`` or architecture, and (in one message) every missing, unexpected or mis-shaped
    tensor. The model is returned in eval mode and carries its spec as ``model.spec``."""
    directory = Path(path)
    if directory.is_file():
        _refuse_pickle(directory)
        raise CheckpointError(f"{directory}: from_pretrained takes a checkpoint directory (with {SPEC_FILE} "
                              f"or {HF_CONFIG_FILE} and safetensors files), not a file")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    ours, hf = (directory / SPEC_FILE).is_file(), (directory / HF_CONFIG_FILE).is_file()
    if not (ours or hf):
        _refuse_pickle(directory)
        raise CheckpointError(f"{directory}: not a checkpoint directory: it has neither {SPEC_FILE} (ours) nor "
                              f"{HF_CONFIG_FILE} (Hugging Face)")
    if not ((directory / WEIGHTS_FILE).is_file() or (directory / INDEX_FILE).is_file()):
        _refuse_pickle(directory)
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}")
    if ours:
        spec = load_spec(directory / SPEC_FILE)
        maps = [TensorMap(ours=name, theirs=(name,)) for name in _own_tensors(_skeleton(spec))]
        describe = "archcomposer checkpoint"
    else:
        spec, maps, describe = _read_hf_config(directory)
    with _TensorFiles(directory) as files:
        return _load(spec, maps, files, describe=describe, dtype=dtype,
                     device=torch.device(device) if device is not None else None, progress=progress)


def family_for_model_type(model_type: str) -> Family:
    """The registered family that reads Hugging Face configs of ``model_type``."""
    families = [f for f, _ in get_registry().families.values()]
    for family in families:
        if model_type in family.hf_model_types and family.converts_hf:
            return family
    known = sorted(t for f in families if f.converts_hf for t in f.hf_model_types)
    raise CheckpointError(f"no registered family reads Hugging Face model_type {model_type!r}; "
                          f"known model types: {', '.join(known) or 'none'}")


def _read_hf_config(directory: Path) -> tuple[ModelSpecBase, list[TensorMap], str]:
    config_path = directory / HF_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON: {exc}") from None
    if "model_type" not in config:
        raise CheckpointError(f"{config_path}: no model_type")
    family = family_for_model_type(config["model_type"])
    architectures = config.get("architectures") or []
    known = [a for a in architectures if a in family.hf_architectures]
    if not known:
        raise CheckpointError(f"{config_path}: architectures {architectures} names none that family "
                              f"{family.name!r} reads; it reads {sorted(family.hf_architectures)}")
    architecture = known[0]
    data = dict(family.spec_from_hf_config(config, architecture))
    data.setdefault("name", directory.resolve().name)
    data["family"] = family.name
    try:
        spec = load_spec(data)
    except SpecError as exc:
        raise CheckpointError(f"{config_path}: family {family.name!r} translated it into an invalid spec: {exc}") \
            from None
    return spec, family.hf_tensors(spec, architecture), f"Hugging Face {architecture} checkpoint"


def _load(spec, maps, files, *, describe, dtype, device, progress) -> ComposedModel:
    model = _skeleton(spec)
    expected = _own_tensors(model)
    aliases = _aliases(model)
    maps = _without_absent_prefixes(maps, files)
    _check(spec, maps, expected, files, describe)
    total = sum(files.nbytes(name) for m in maps for name in m.theirs)
    bar = _Progress(f"loading {files.directory.name}", total,
                    enabled=progress if progress is not None else total >= PROGRESS_MIN_BYTES)
    state = {}
    for m in maps:
        theirs = [files.get(name) for name in m.theirs]
        tensor = m.to_ours(*theirs) if m.to_ours is not None else theirs[0]
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if device is not None:
            tensor = tensor.to(device)
        state[m.ours] = tensor.contiguous()
        del theirs, tensor
        bar.advance(sum(files.nbytes(name) for name in m.theirs))
    bar.close()
    model.load_state_dict(state, strict=False, assign=True)
    for alias, canonical in aliases.items():
        _set_tensor(model, alias, model.get_parameter(canonical))
    if device is not None:
        model.to(device)  # the buffers
    return model.eval()


def _without_absent_prefixes(maps: list[TensorMap], files) -> list[TensorMap]:
    """Many published checkpoints were saved from the bare model, so a head architecture's names
    lack the base-model prefix (``h.0...`` for ``transformer.h.0...``). Where every absent name
    under a first component is present without it, read it without it (as transformers does)."""
    absent: dict[str, list[str]] = {}
    for name in (n for m in maps for n in m.theirs if n not in files):
        prefix, dot, rest = name.partition(".")
        absent.setdefault(prefix, []).append(rest if dot else "")
    strip = {p for p, rests in absent.items() if all(r and r in files for r in rests)}
    if not strip:
        return maps
    rename = {n: n.partition(".")[2] for m in maps for n in m.theirs
              if n not in files and n.partition(".")[0] in strip}
    return [dataclasses.replace(m, theirs=tuple(rename.get(n, n) for n in m.theirs)) for m in maps]


def _check(spec, maps: list[TensorMap], expected: dict[str, torch.Tensor], files, describe: str) -> None:
    """Collect every missing, unexpected and mis-shaped tensor into one CheckpointError, before
    any tensor data is read (shapes come from the file headers; transforms run on meta tensors)."""
    missing, misshaped, used = [], [], set()
    for m in maps:
        if m.ours not in expected:
            raise CheckpointError(f"the tensor map names {m.ours!r}, which a model of spec {spec.name!r} does not "
                                  f"have (a bug in the family plugin)")
        absent = [name for name in m.theirs if name not in files]
        used.update(m.theirs)
        if absent:
            missing.append(", ".join(absent) + ("" if m.theirs == (m.ours,) else f" (for {m.ours})"))
            continue
        metas = [torch.empty(files.shape(n), dtype=files.dtype(n), device="meta") for n in m.theirs]
        source = ", ".join(f"{n} {list(files.shape(n))}" for n in m.theirs)
        want = list(expected[m.ours].shape)
        try:
            got = list((m.to_ours(*metas) if m.to_ours is not None else metas[0]).shape)
        except (RuntimeError, ValueError, IndexError):
            got = None
        if got != want:
            into = "" if m.theirs == (m.ours,) else f" -> {m.ours}"
            misshaped.append(f"{source}{into}: the model expects {want}")
    mapped = {m.ours for m in maps}
    missing += [f"{name} (no checkpoint tensor maps to it)" for name in expected if name not in mapped]
    unexpected = sorted(set(files.names) - used)
    if missing or unexpected or misshaped:
        lines = [f"{files.directory}: the {describe} does not match spec {spec.name!r}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items]
        raise CheckpointError("\n".join(lines))


class _TensorFiles:
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


def _refuse_pickle(path: Path) -> None:
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
# the model skeleton


_meta_lock = threading.Lock()


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Construct modules with their parameters on the meta device (never allocated nor
    initialised for real) and their buffers computed as usual (prompt ids, tables). Other
    threads constructing modules meanwhile are not affected."""
    register = nn.Module.register_parameter
    builder = threading.get_ident()

    def register_on_meta(module, name, param):
        if param is not None and param.device.type != "meta" and threading.get_ident() == builder:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    with _meta_lock:
        nn.Module.register_parameter = register_on_meta
        try:
            yield
        finally:
            nn.Module.register_parameter = register


def _skeleton(spec: ModelSpecBase) -> ComposedModel:
    with _parameters_on_meta():
        return ComposedModel(spec)


def _aliases(model: nn.Module) -> dict[str, str]:
    """Tied parameters: each second and later name of a shared parameter -> the first name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _own_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint of this model holds: the persistent state, each tied tensor once."""
    aliases = _aliases(model)
    return {name: t for name, t in model.state_dict(keep_vars=True).items() if name not in aliases}


def _set_tensor(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, param)


# ---------------------------------------------------------------------------------------------
# saving


def save_pretrained(model: ComposedModel, path: str | os.PathLike, *, format: str = "archcomposer",
                    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, head: str | None = None) -> Path:
    """Write ``model`` to the directory ``path`` and return it.

    ``format="archcomposer"`` (ours): ``spec.yaml`` and safetensors under our names.
    ``format="hf"``: ``config.json`` and safetensors that transformers' ``AutoModel*`` classes
    load; the spec's family plugin (or, for a spec without a family, the first family that can
    express it) translates. A Hugging Face model has one head: with several, name it (``head=``).

    Weights above ``max_shard_size`` (bytes, or ``"500MB"``, ``"5GB"``) are split into shards with
    an index. The directory is written next to the target and renamed into place: an interrupted
    save leaves the previous checkpoint there intact. Other files in an existing target directory
    (a tokenizer) are kept."""
    if format not in FORMATS:
        raise CheckpointError(f"format={format!r}: expected one of {FORMATS}")
    limit = _parse_size(max_shard_size)
    own = {name: t.detach() for name, t in _own_tensors(model).items()}
    if format == "archcomposer":
        if head is not None:
            raise CheckpointError("head= selects the head of a Hugging Face export; our format keeps every head")
        spec_text = yaml.safe_dump(model.spec.to_dict(), sort_keys=False)

        def write(directory: Path) -> None:
            (directory / SPEC_FILE).write_text(spec_text)
            _write_tensors(directory, own, limit, {"format": "pt", "archcomposer": "archcomposer"})
    else:
        config, tensors = _to_hf(model.spec, own, head)

        def write(directory: Path) -> None:
            (directory / HF_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            _write_tensors(directory, tensors, limit, {"format": "pt"})
    return _write_atomically(Path(path), write)


def _to_hf(spec: ModelSpecBase, own: dict[str, torch.Tensor], head: str | None):
    kinds = [h.kind for h in spec.heads]
    if head is None and len(kinds) > 1:
        raise CheckpointError(f"a Hugging Face model has one head; spec {spec.name!r} has {kinds}: pass head=")
    if head is not None and head not in kinds:
        raise CheckpointError(f"head={head!r}: spec {spec.name!r} has heads {kinds or 'none'}")
    head = head if head is not None else (kinds[0] if kinds else None)
    if len(kinds) > 1:
        spec = spec.model_copy(update={"heads": [h for h in spec.heads if h.kind == head]})
    family, architecture, config = _hf_family_for(spec, head)
    config = {**config, "architectures": [architecture]}
    config.setdefault("model_type", family.hf_model_types[0])
    floats = [t.dtype for t in own.values() if t.is_floating_point()]
    if floats:
        config.setdefault("dtype", str(floats[0]).removeprefix("torch."))
    tensors: dict[str, torch.Tensor] = {}
    mapped = set()
    for m in family.hf_tensors(spec, architecture):
        mapped.add(m.ours)
        out = m.to_theirs(own[m.ours]) if m.to_theirs is not None else (own[m.ours],)
        tensors.update(zip(m.theirs, out, strict=True))
    dropped = [n for n in own if n not in mapped and not (n.startswith("heads.") and n.split(".")[1] != head)]
    if dropped:
        raise CheckpointError(f"family {family.name!r} maps no Hugging Face tensor for {dropped} "
                              f"(a bug in the family plugin)")
    return config, tensors


def _hf_family_for(spec: ModelSpecBase, head: str | None) -> tuple[Family, str, dict]:
    registry = get_registry()
    if spec.family is not None:
        candidates = [registry.families[spec.family][0]]
        if not candidates[0].converts_hf:
            raise CheckpointError(f"family {spec.family!r} does not convert to Hugging Face checkpoints")
    else:
        candidates = [f for f, _ in registry.families.values() if f.converts_hf]
    reasons = []
    for family in candidates:
        try:
            architecture = family.hf_architecture_for(head)
        except KeyError:
            reasons.append(f"{family.name}: heads: no Hugging Face architecture with a {head or 'bare'} head "
                           f"(it has {sorted(family.hf_architectures)})")
            continue
        try:
            return family, architecture, family.hf_config_from_spec(spec, architecture)
        except CheckpointError as exc:
            reasons.append(f"{family.name}: {exc}")
    if len(reasons) == 1:
        family, _, reason = reasons[0].partition(": ")
        raise CheckpointError(f"spec {spec.name!r} (family {family}) cannot be exported to Hugging Face: {reason}")
    raise CheckpointError(f"spec {spec.name!r} has no Hugging Face equivalent in any family:\n  "
                          + "\n  ".join(reasons))


def _parse_size(size: int | str) -> int:
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


def _write_tensors(directory: Path, tensors: dict[str, torch.Tensor], max_shard_size: int,
                   metadata: dict[str, str]) -> None:
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
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
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


class _Progress:
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


# ---------------------------------------------------------------------------------------------
# helpers for family plugins


def require(family: str, field: str, value: Any, expected: Any) -> None:
    """Raise the export error for a spec field that ``family``'s Hugging Face model cannot express."""
    if value != expected:
        raise CheckpointError(f"{field} = {value!r} has no equivalent in Hugging Face {family}, which needs "
                              f"{expected!r}")


#: transformers' ``hidden_act`` names <-> our activations.
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def activation_from_hf(config: dict[str, Any], key: str = "hidden_act", default: str = "silu") -> str:
    name = config.get(key) or default
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"config.json {key} = {name!r} is not supported; supported: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def heads_from_hf(config: dict[str, Any], kind: str | None, **causal_lm: Any) -> list[dict[str, Any]]:
    """The ``heads`` of a spec for the head kind of a Hugging Face architecture, read as
    transformers' task heads read the config (``num_labels``/``id2label``, ``problem_type``,
    ``classifier_dropout``); ``causal_lm`` adds fields to a causal-LM head."""
    if kind is None:
        return []
    if kind == "causal_lm":
        return [{"kind": kind, **causal_lm}]
    if kind == "question_answering":
        return [{"kind": kind}]
    num_labels = len(config["id2label"]) if config.get("id2label") else config.get("num_labels", 2)
    if kind == "sequence_classification":
        return [{"kind": kind, "num_labels": num_labels, "problem_type": config.get("problem_type")}]
    dropout = next((config[k] for k in ("classifier_dropout", "hidden_dropout") if config.get(k) is not None), 0.1)
    return [{"kind": kind, "num_labels": num_labels, "dropout": dropout}]


def hf_head_config(spec: ModelSpecBase, family: str, **causal_lm: Any) -> dict[str, Any]:
    """The config.json fields for the spec's head, checking it matches transformers' task heads
    (no bias on the LM and sequence-classification heads, a bias on the others); ``causal_lm``
    gives the causal-LM head fields the family needs (default: ``shift_labels=True``)."""
    if not spec.heads:
        return {}
    head = spec.heads[0]
    biases = {"causal_lm": False, "sequence_classification": False, "token_classification": True,
              "question_answering": True}
    require(family, "heads[0].bias", head.bias, biases[head.kind])
    if head.kind == "causal_lm":
        for field, expected in {"shift_labels": True, **causal_lm}.items():
            require(family, f"heads[0].{field}", getattr(head, field), expected)
        return {}
    if head.kind == "question_answering":
        return {}
    labels = {"id2label": {str(i): f"LABEL_{i}" for i in range(head.num_labels)},
              "label2id": {f"LABEL_{i}": i for i in range(head.num_labels)}}
    if head.kind == "sequence_classification":
        return {**labels, "problem_type": head.problem_type}
    return {**labels, "classifier_dropout": head.dropout}


def fused_or_split(ours: str, fused: bool, param: str, theirs: dict[str, str], sizes: list[int]) -> list[TensorMap]:
    """Tensor maps for our projection ``ours`` (``layers.0.attention.qkv``) from separate tensors
    of theirs (part name -> their tensor name): a ``FusedProjection`` (rows of the parts, of
    ``sizes``, concatenated in ``theirs`` order) or a ``SplitProjection`` with those part names."""
    if not fused:
        return [TensorMap(f"{ours}.{part}.{param}", name) for part, name in theirs.items()]
    return [TensorMap(f"{ours}.proj.{param}", tuple(theirs.values()), to_ours=lambda *parts: torch.cat(parts),
                      to_theirs=lambda t: tuple(t.split(sizes)))]


def head_tensors(spec: ModelSpecBase, names: dict[str, dict[str, str]]) -> list[TensorMap]:
    """Tensor maps for the spec's heads, from ``names``: head kind -> {our tensor under
    ``heads.<kind>.`` -> theirs}. A bias is mapped only where the head has one, and a causal-LM
    head tied to the embedding maps nothing (the embedding matrix is the head)."""
    maps = []
    for head in spec.heads:
        if head.kind == "causal_lm" and spec.embedding.tied:
            continue
        maps += [TensorMap(f"heads.{head.kind}.{ours}", theirs) for ours, theirs in names[head.kind].items()
                 if ours.endswith("weight") or head.bias]
    return maps


def llama_layout_tensors(spec: ModelSpecBase, base: str) -> list[TensorMap]:
    """Tensor maps for the trunk of a checkpoint in the Llama layout that many Hugging Face
    families share (Seed-OSS, Llama, Qwen2, Mistral): ``{base}embed_tokens``, ``{base}norm`` and per
    layer ``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``post_attention_layernorm`` and
    ``mlp.{gate,up,down}_proj``, each with a bias where the spec has one. ``base`` is the
    base-model prefix (``model.``, or ``""`` for the bare model)."""
    a, m = spec.attention, spec.mlp
    qkv_sizes = [a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.num_kv_heads * a.head_dim]
    params = ("weight", "bias")
    maps = [TensorMap("embedding.tokens.weight", f"{base}embed_tokens.weight"),
            TensorMap("final_norm.weight", f"{base}norm.weight")]
    for i in range(spec.num_layers):
        ours, theirs = f"layers.{i}", f"{base}layers.{i}"
        maps += [TensorMap(f"{ours}.attn_norm.weight", f"{theirs}.input_layernorm.weight"),
                 TensorMap(f"{ours}.mlp_norm.weight", f"{theirs}.post_attention_layernorm.weight")]
        for p in params[: 1 + a.qkv_bias]:
            maps += fused_or_split(f"{ours}.attention.qkv", a.fused_qkv, p,
                                   {n: f"{theirs}.self_attn.{n}_proj.{p}" for n in "qkv"}, qkv_sizes)
        maps += [TensorMap(f"{ours}.attention.out.{p}", f"{theirs}.self_attn.o_proj.{p}")
                 for p in params[: 1 + a.out_bias]]
        for p in params[: 1 + m.bias]:
            maps += fused_or_split(f"{ours}.mlp.gate_up", m.fused, p,
                                   {n: f"{theirs}.mlp.{n}_proj.{p}" for n in ("gate", "up")},
                                   [m.intermediate_size] * 2)
            maps.append(TensorMap(f"{ours}.mlp.down.{p}", f"{theirs}.mlp.down_proj.{p}"))
    return maps


def llama_layout_config(spec: ModelSpecBase, family: str) -> dict[str, Any]:
    """The ``config.json`` fields that families in the Llama layout (see ``llama_layout_tensors``)
    share, after checking the spec has that layout's structure: RMSNorm, no embedding norm,
    segments or prompt, causal GQA, a gated MLP and residuals from the layer input. The family adds
    its ``model_type``, position, bias and dropout fields and the head fields."""
    a = spec.attention
    require(family, "norm.kind", spec.norm.kind, "rmsnorm")
    require(family, "embedding.norm", spec.embedding.norm, False)
    require(family, "embedding.segments", spec.embedding.segments, None)
    require(family, "embedding.prompt", spec.embedding.prompt, None)
    require(family, "attention.kind", a.kind, "gqa")
    require(family, "attention.mask", a.mask, "causal")
    require(family, "mlp.kind", spec.mlp.kind, "gated")
    require(family, "residual.from_norm", spec.residual.from_norm, False)
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.mlp.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": a.num_heads,
        "num_key_value_heads": a.num_kv_heads,
        "head_dim": a.head_dim,
        "hidden_act": ACTIVATIONS_TO_HF[spec.mlp.activation],
        "max_position_embeddings": spec.max_positions,
        "initializer_range": spec.initializer_range,
        "rms_norm_eps": spec.norm.eps,
        "pad_token_id": spec.pad_token_id,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "tie_word_embeddings": spec.embedding.tied,
    }
