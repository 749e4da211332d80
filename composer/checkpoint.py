"""Checkpoints: load a Hugging Face model directory or our own, save ours, export to Hugging Face.

Our format is a directory with ``spec.yaml`` (the spec) and safetensors under our parameter
names. A Hugging Face directory has ``config.json`` instead of ``spec.yaml``; the family plugin
whose ``hf_model_types`` holds its ``model_type`` translates config and tensor names (see
``archcomposer.family``). ``archcomposer.storage`` reads and writes the files.

Loading builds the model with its parameters on the meta device (nothing allocated), reads the
tensors one at a time from the memory-mapped files into a state dict and assigns them, so the
weights are held once."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from archcomposer import hf_remote
from archcomposer.build import retie, skeleton, tied_parameters
from archcomposer.errors import CheckpointError, ComposerError, SpecError
from archcomposer.family import Family, TensorMap
from archcomposer.model import ComposedModel
from archcomposer.registry import get_registry
from archcomposer.spec import MAX_LAYERS, ModelSpecBase
from archcomposer.specfile import load_spec
from archcomposer.storage import (FLOAT_DTYPES, HF_CONFIG_FILE, INDEX_FILE, PROGRESS_MIN_BYTES, SPEC_FILE,
                                  WEIGHTS_FILE, Progress, TensorFiles, json_type, parse_size, read_json, recover,
                                  refuse_pickle, write_atomically, write_tensors)
from archcomposer.tokenizer import find_tokenizer

DEFAULT_MAX_SHARD_SIZE = "5GB"
FORMATS = ("archcomposer", "hf")


# ---------------------------------------------------------------------------------------------
# loading


def from_pretrained(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                    device: str | torch.device | None = None, progress: bool | None = None) -> ComposedModel:
    """Load a checkpoint directory: ours (``spec.yaml``) or Hugging Face's (``config.json``).

    ``dtype`` casts floating-point weights as they are read (default: as stored; a checkpoint that
    stores them in several dtypes loads in the one most of its weights use): a torch dtype or its
    name (``"bfloat16"``, ``"torch.float16"``). ``device`` is where they go (default: CPU).
    ``progress`` shows a progress line on stderr (default: for loads of 1 GiB or more). Raises
    ``CheckpointError`` for a pickle checkpoint, an unreadable or malformed file, an unknown
    ``model_type`` or architecture, and (in one message) every missing, unexpected, mis-shaped or
    wrongly typed tensor. The model is returned in eval mode and carries its spec as ``model.spec``
    and the directory's tokenizer, ours or transformers', as ``model.tokenizer`` (None if it has
    none)."""
    dtype, device = _dtype_argument(dtype), _device_argument(device)
    if progress is not None and not isinstance(progress, bool):
        raise CheckpointError(f"progress={progress!r}: expected True, False or None (shown for loads of 1 GiB or more)")
    directory = _checkpoint_directory(path)
    source = _read_checkpoint(directory)
    tokenizer = find_tokenizer(directory)
    with TensorFiles(directory) as files:
        model = _load(source, files, dtype=dtype, device=device, progress=progress)
    model.tokenizer = tokenizer
    return model


def checkpoint_spec(path: str | os.PathLike) -> ModelSpecBase:
    """The spec of a checkpoint directory (ours or Hugging Face's), without reading its tensors'
    data: what lets every command that takes a spec take a checkpoint too."""
    return _read_checkpoint(_checkpoint_directory(path)).spec


def check_checkpoint(path: str | os.PathLike) -> ModelSpecBase:
    """The spec of a checkpoint directory, once its tensors are checked against the spec's model
    (every missing, unexpected, mis-shaped and wrongly typed one, in one ``CheckpointError``) from
    the safetensors headers alone: no tensor data is read. What ``archcomposer validate`` runs."""
    directory = _checkpoint_directory(path)
    source = _read_checkpoint(directory)
    with TensorFiles(directory) as files:
        _check_layer_count(source, files)
        _check(source.spec, _without_absent_prefixes(source.maps(), files), own_tensors(skeleton(source.spec)), files,
               source.describe, source.ignored, source.note)
    return source.spec


#: ``dtype=`` of a load: the floating-point dtypes weights may be cast to, by torch's names for them.
LOAD_DTYPES = {"float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
               "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64}


def _dtype_argument(dtype: Any) -> torch.dtype | None:
    """A torch dtype or its name, as transformers' ``dtype=`` takes them."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in LOAD_DTYPES.values()):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in LOAD_DTYPES:
        return LOAD_DTYPES[dtype.removeprefix("torch.")]
    raise CheckpointError(f"dtype={dtype!r}: expected the floating-point dtype to cast weights to, torch.float16, "
                          f"torch.bfloat16, torch.float32 or torch.float64 (or its name, e.g. 'bfloat16'), or None "
                          f"to keep the stored dtypes")


def _device_argument(device: Any) -> torch.device | None:
    """A device this process can put tensors on, checked before anything is read."""
    if device is None:
        return None
    expected = "expected a torch device such as 'cpu', 'cuda' or 'cuda:1'"
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise CheckpointError(f"device={device!r}: {expected}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"device={device!r}: not a torch device ({exc}); {expected}") from None
    if resolved.type == "meta":
        raise CheckpointError(f"device={device!r} holds no data, so nothing would be loaded; "
                              f"build_model(spec, device='meta') builds a model without weights")
    try:
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"device={device!r}: this process cannot put tensors there ({exc}); "
                              f"device='cpu' always can") from None
    return resolved


def _checkpoint_directory(path: Any) -> Path:
    """``path`` as a checkpoint directory: it exists (put back by ``recover`` if a killed save left
    it between two renames), is not a pickle checkpoint, has a spec or config and weights."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path={path!r}: expected a checkpoint directory (a str or os.PathLike)")
    try:
        directory = Path(path)
    except TypeError:  # an os.PathLike of bytes
        raise CheckpointError(f"path={path!r}: expected a checkpoint directory (a str or os.PathLike)") from None
    if not directory.exists():
        try:
            recover(directory)
        except OSError:
            pass  # nothing to put back, or no write access here: the checks below say what is missing
    if directory.is_file():
        refuse_pickle(directory)
        raise CheckpointError(f"{directory}: from_pretrained takes a checkpoint directory (with {SPEC_FILE} "
                              f"or {HF_CONFIG_FILE} and safetensors files), not a file")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    ours, hf = (directory / SPEC_FILE).is_file(), (directory / HF_CONFIG_FILE).is_file()
    if not (ours or hf):
        refuse_pickle(directory)
        raise CheckpointError(f"{directory}: not a checkpoint directory: it has neither {SPEC_FILE} (ours) nor "
                              f"{HF_CONFIG_FILE} (Hugging Face)")
    if not (os.path.lexists(directory / WEIGHTS_FILE) or os.path.lexists(directory / INDEX_FILE)):
        refuse_pickle(directory)
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}")
    return directory


@dataclasses.dataclass(frozen=True)
class _Source:
    """What a checkpoint holds, read from its spec or config (no tensor file is opened): the spec,
    where each tensor of ours is stored (``maps()`` builds the model on the meta device, so it
    waits for ``_check_layer_count``), and what to say about it in errors."""

    spec: ModelSpecBase
    maps: Callable[[], list[TensorMap]]
    describe: str
    #: The file the spec came from, and the field its layer count was read from.
    where: str
    ignored: tuple[str, ...] = ()
    #: Said after a mismatch: config.json keys the family filled with transformers' defaults.
    note: str = ""


def _read_checkpoint(directory: Path) -> _Source:
    if not (directory / SPEC_FILE).is_file():
        return _read_hf_config(directory)
    spec = load_spec(directory / SPEC_FILE)
    return _Source(spec, lambda: [TensorMap(ours=name, theirs=(name,)) for name in own_tensors(skeleton(spec))],
                   "archcomposer checkpoint", f"{directory / SPEC_FILE}: num_layers = {spec.num_layers}")


def family_for_model_type(model_type: str) -> Family:
    """The registered family that reads Hugging Face configs of ``model_type``."""
    families = [f for f, _ in get_registry().families.values()]
    for family in families:
        if model_type in family.hf_model_types and family.converts_hf:
            return family
    known = sorted(t for f in families if f.converts_hf for t in f.hf_model_types)
    raise CheckpointError(f"no registered family reads Hugging Face model_type {model_type!r}; "
                          f"known model types: {', '.join(known) or 'none'}")


#: Spec fields that set tensor shapes: where config.json lacks their key, a mismatch says so.
_SIZE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "attention.num_heads", "attention.num_kv_heads",
                "attention.head_dim", "mlp.intermediate_size")


def _read_hf_config(directory: Path) -> _Source:
    config_path = directory / HF_CONFIG_FILE
    config = read_json(config_path, "a JSON object of Hugging Face model settings")
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: a JSON {json_type(config)}; expected a JSON object of "
                              f"Hugging Face model settings (model_type, architectures, hidden_size, ...)")
    if "model_type" not in config:
        raise CheckpointError(f"{config_path}: no model_type")
    if not isinstance(config["model_type"], str):
        raise CheckpointError(f"{config_path}: model_type = {config['model_type']!r}; expected a model type name "
                              f"such as 'llama'")
    if config["model_type"] == hf_remote.MODEL_TYPE:  # a spec no family expresses, exported for transformers
        return _read_archcomposer_config(config, config_path)
    family = family_for_model_type(config["model_type"])
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise CheckpointError(f"{config_path}: architectures = {architectures!r}; expected a list of architecture "
                              f"names such as ['LlamaForCausalLM']")
    known = [a for a in architectures if a in family.hf_architectures]
    if not known:
        raise CheckpointError(f"{config_path}: architectures {architectures} names none that family "
                              f"{family.name!r} reads; it reads {sorted(family.hf_architectures)}")
    architecture = known[0]
    for key in family.hf_config_keys.get("num_layers", ()):  # before a family's code makes a list per layer
        value = config.get(key)
        if isinstance(value, int) and value > MAX_LAYERS:
            raise CheckpointError(f"{config_path}: {key} = {value}: more layers than a spec accepts ({MAX_LAYERS})")
    reads = _ReadLog(config)
    try:
        data = dict(family.spec_from_hf_config(reads, architecture))
    except ComposerError as exc:
        raise CheckpointError(f"{directory}: {exc}") from None
    except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:  # a family's own code
        where = next((f" (reading {key} = {_short(config[key])})" for key in reversed(reads.keys_read)
                      if key in config), "")
        raise CheckpointError(f"{config_path}: family {family.name!r} cannot read it ({type(exc).__name__}: "
                              f"{exc}){where}") from None
    defaulted = [(path, keys[0]) for path, keys in family.hf_config_keys.items()
                 if path in _SIZE_FIELDS and not any(k in config for k in keys)]
    note = ("" if not defaulted else
            f"\n  {config_path} has no {', '.join(k for _, k in defaulted)}: the family used transformers' default"
            f"{'s' if len(defaulted) > 1 else ''} ({', '.join(f'{k} = {_at(data, p)!r}' for p, k in defaulted)})")
    data.setdefault("name", directory.resolve().name)
    data["family"] = family.name
    try:
        spec = load_spec(data)
    except SpecError as exc:
        raise CheckpointError(f"{config_path}: family {family.name!r} translated it into an invalid spec: "
                              f"{_with_config_keys(str(exc), family.hf_config_keys)}") from None
    return _Source(spec, lambda: family.hf_tensors(spec, architecture), f"Hugging Face {architecture} checkpoint",
                   f"{config_path}: as family {family.name!r} reads it", family.hf_ignored_tensors, note)


def _read_archcomposer_config(config: dict, config_path: Path) -> _Source:
    try:
        spec = load_spec(hf_remote.spec_data(config, str(config_path)))
    except SpecError as exc:
        raise CheckpointError(f"{config_path}: its spec is invalid: {exc}") from None
    return _Source(spec, lambda: [TensorMap(ours=name, theirs=(hf_remote.TENSOR_PREFIX + name,))
                                  for name in own_tensors(skeleton(spec))],
                   "archcomposer transformers checkpoint", f"{config_path}: spec.num_layers = {spec.num_layers}")


class _ReadLog(dict):
    """A config that records the keys read from it, so that an error in a family's code can name
    the key it was reading."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.keys_read: list[Any] = []

    def __getitem__(self, key):
        self.keys_read.append(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.keys_read.append(key)
        return super().get(key, default)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _at(data: dict, path: str) -> Any:
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _with_config_keys(message: str, keys: dict[str, tuple[str, ...]]) -> str:
    """A spec error's field lines (``  attention.num_heads: ...``) with the config.json key each
    field was read from."""
    def name(match: re.Match) -> str:
        path = match.group(2)
        return f"{match.group(1)}{path} (config.json {keys[path][0]}):" if path in keys else match.group(0)

    return re.sub(r"(?m)^(\s*)([\w.]+):", name, message)


def _check_layer_count(source: _Source, files: TensorFiles) -> None:
    """Refuse more layers than the checkpoint has tensors (each layer has several of its own)
    before the model is built: building thousands of layers takes minutes."""
    if source.spec.num_layers > len(files.names):
        raise CheckpointError(f"{source.where}: the checkpoint cannot hold {source.spec.num_layers} layers (it has "
                              f"{len(files.names)} tensors, and each layer has several of its own){source.note}")


def _load(source: _Source, files: TensorFiles, *, dtype, device, progress) -> ComposedModel:
    spec = source.spec
    _check_layer_count(source, files)
    model = skeleton(spec)
    expected = own_tensors(model)
    aliases = tied_parameters(model)
    maps = _without_absent_prefixes(source.maps(), files)
    _check(spec, maps, expected, files, source.describe, source.ignored, source.note)
    dtype = dtype or _one_float_dtype(files, maps)
    total = sum(files.nbytes(name) for m in maps for name in m.theirs)
    bar = Progress(f"loading {files.directory.name}", total,
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
    retie(model, aliases)
    left = [name for name, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:  # a block that keeps a tensor outside its parameters (see build.skeleton)
        raise CheckpointError(f"the model of spec {spec.name!r} has tensors no checkpoint fills: {left}")
    if device is not None:
        model.to(device)  # the buffers
    return model.eval()


def _one_float_dtype(files: TensorFiles, maps: list[TensorMap]) -> torch.dtype | None:
    """The dtype a load without ``dtype=`` casts floating-point weights to: None (as stored) where
    they are all stored in one; else the one most of their elements are stored in, since a model
    computes in one dtype (transformers casts to one too)."""
    elements: dict[torch.dtype, int] = {}
    for name in (n for m in maps for n in m.theirs):
        if files.dtype(name) in FLOAT_DTYPES.values():
            elements[files.dtype(name)] = elements.get(files.dtype(name), 0) + torch.Size(files.shape(name)).numel()
    return max(elements, key=elements.get) if len(elements) > 1 else None


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


def _check(spec, maps: list[TensorMap], expected: dict[str, torch.Tensor], files, describe: str,
           ignored: tuple[str, ...] = (), note: str = "") -> None:
    """Collect every missing, unexpected, mis-shaped and wrongly typed tensor into one
    CheckpointError, before any tensor data is read (shapes and dtypes come from the file headers;
    transforms run on meta tensors). ``note`` ends the message (what the config left out)."""
    missing, misshaped, mistyped, used = [], [], [], set()
    for m in maps:
        if m.ours not in expected:
            raise CheckpointError(f"the tensor map names {m.ours!r}, which a model of spec {spec.name!r} does not "
                                  f"have (a bug in the family plugin)")
        absent = [name for name in m.theirs if name not in files]
        used.update(m.theirs)
        if absent:
            missing.append(", ".join(absent) + ("" if m.theirs == (m.ours,) else f" (for {m.ours})"))
            continue
        into = "" if m.theirs == (m.ours,) else f" -> {m.ours}"
        wrong = [n for n in m.theirs if not _dtype_fits(files.dtype(n), expected[m.ours])]
        if wrong:
            want = ("a floating-point tensor (F16, BF16, F32 or F64)" if expected[m.ours].is_floating_point()
                    else str(expected[m.ours].dtype))
            stored = ", ".join(f"{n} {files.dtype_name(n)}" for n in wrong)
            mistyped.append(f"{stored}{into}: the model expects {want}")
            continue
        metas = [torch.empty(files.shape(n), dtype=files.dtype(n), device="meta") for n in m.theirs]
        source = ", ".join(f"{n} {list(files.shape(n))}" for n in m.theirs)
        want = list(expected[m.ours].shape)
        try:
            got = list((m.to_ours(*metas) if m.to_ours is not None else metas[0]).shape)
        except (RuntimeError, ValueError, IndexError):
            got = None
        if got != want:
            misshaped.append(f"{source}{into}: the model expects {want}")
    mapped = {m.ours for m in maps}
    missing += [f"{name} (no checkpoint tensor maps to it)" for name in expected if name not in mapped]
    unexpected = sorted(n for n in set(files.names) - used if not any(re.search(p, n) for p in ignored))
    if missing or unexpected or misshaped or mistyped:
        lines = [f"{files.directory}: the {describe} does not match spec {spec.name!r}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                             ("wrong dtype", mistyped)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items]
        raise CheckpointError("\n".join(lines) + note)


def _dtype_fits(stored: torch.dtype | None, expected: torch.Tensor) -> bool:
    """A floating-point weight may be stored in any of ``FLOAT_DTYPES`` (it is cast, or kept, as
    transformers does); anything else must be stored as the model holds it."""
    if expected.is_floating_point():
        return stored in FLOAT_DTYPES.values()
    return stored == expected.dtype


# ---------------------------------------------------------------------------------------------
# the model skeleton


def own_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint of this model holds: the persistent state, each tied tensor once."""
    aliases = tied_parameters(model)
    return {name: t for name, t in model.state_dict(keep_vars=True).items() if name not in aliases}


# ---------------------------------------------------------------------------------------------
# saving


def save_pretrained(model: ComposedModel, path: str | os.PathLike, *, format: str = "archcomposer",
                    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, head: str | None = None,
                    progress: bool | None = None) -> Path:
    """Write ``model`` to the directory ``path`` and return it.

    ``format="archcomposer"`` (ours): ``spec.yaml`` and safetensors under our names.
    ``format="hf"``: ``config.json`` and safetensors that transformers' ``AutoModel*`` classes
    load; the spec's family plugin (or, for a spec without a family, the first family that can
    express it) translates. A spec without a family that no family expresses is written for
    transformers' ``trust_remote_code`` (``archcomposer.hf_remote``): ``model_type: "archcomposer"``
    and two small modules that import ``archcomposer.hf``. A Hugging Face model has one head: with
    several, name it (``head=``).

    Weights above ``max_shard_size`` (bytes, or ``"500MB"``, ``"5GB"``) are split into shards with
    an index. ``model.tokenizer``, if set, is written too (in the same format), replacing any
    tokenizer there. The directory is written next to the target and swapped into place
    (``archcomposer.storage.write_atomically``): a killed save leaves a complete checkpoint there,
    the previous one or the new one; through a symlink, the link's target is written. Other files
    in an existing target directory (a tokenizer, when the model has none) are kept. ``progress`` shows a
    progress line on stderr (default: for saves of 1 GiB or more)."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path={path!r}: expected the checkpoint directory to write (a str or os.PathLike)")
    if format not in FORMATS:
        raise CheckpointError(f"format={format!r}: expected one of {FORMATS}")
    limit = parse_size(max_shard_size)
    own, sharded = _gathered({name: t.detach() for name, t in own_tensors(model).items()})
    tokenizer = model.tokenizer.writer(format) if model.tokenizer is not None else None
    if format == "archcomposer":
        if head is not None:
            raise CheckpointError("head= selects the head of a Hugging Face export; our format keeps every head")
        tensors, metadata = own, {"format": "pt", "archcomposer": "archcomposer"}
        config_file, config_text = SPEC_FILE, yaml.safe_dump(model.spec.to_dict(), sort_keys=False)
    else:
        config, tensors = _to_hf(model.spec, own, head)
        metadata = {"format": "pt"}
        config_file, config_text = HF_CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n"
    remote_code = format == "hf" and config["model_type"] == hf_remote.MODEL_TYPE
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    bar = Progress(f"saving {Path(path).name}", total,
                   enabled=progress if progress is not None else total >= PROGRESS_MIN_BYTES)

    def write(directory: Path) -> None:
        (directory / config_file).write_text(config_text)
        write_tensors(directory, tensors, limit, metadata, bar)
        if tokenizer is not None:
            tokenizer(directory)
        if remote_code:
            hf_remote.write_sources(directory)

    if sharded and torch.distributed.get_rank() != 0:  # rank 0 writes; the others wait until it has
        torch.distributed.barrier()
        return Path(path)
    try:
        return write_atomically(Path(path), write)
    finally:
        bar.close()
        if sharded:
            torch.distributed.barrier()


def _gathered(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """The full tensors of a model sharded with ``archcomposer.distributed`` (FSDP or tensor
    parallel: DTensors), gathered on every rank (so every rank must save), and whether it was sharded."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return tensors, False
    from torch.distributed.tensor import DTensor

    if not any(isinstance(t, DTensor) for t in tensors.values()):
        return tensors, False
    return {name: t.full_tensor() if isinstance(t, DTensor) else t for name, t in tensors.items()}, True


def _to_hf(spec: ModelSpecBase, own: dict[str, torch.Tensor], head: str | None):
    kinds = [h.kind for h in spec.heads]
    if head is None and len(kinds) > 1:
        raise CheckpointError(f"a Hugging Face model has one head; spec {spec.name!r} has {kinds}: pass head=")
    if head is not None and head not in kinds:
        raise CheckpointError(f"head={head!r}: spec {spec.name!r} has heads {kinds or 'none'}")
    head = head if head is not None else (kinds[0] if kinds else None)
    if len(kinds) > 1:
        spec = spec.model_copy(update={"heads": [h for h in spec.heads if h.kind == head]})
    floats = [t.dtype for t in own.values() if t.is_floating_point()]
    dtype = str(floats[0]).removeprefix("torch.") if floats else None
    try:
        family, architecture, config = _hf_family_for(spec, head)
    except _NoFamily as exc:
        if spec.family is not None:
            raise CheckpointError(f"{exc} (left without a family, a spec that no family expresses exports for "
                                  f"transformers' trust_remote_code, model_type {hf_remote.MODEL_TYPE!r})") from None
        if head not in hf_remote.ARCHITECTURES:
            raise
        # No family expresses it: our own tensors, for the transformers classes of archcomposer.hf.
        kept = {n: t for n, t in own.items() if not (n.startswith("heads.") and n.split(".")[1] != head)}
        return (hf_remote.hf_config(spec, head, dtype),
                {hf_remote.TENSOR_PREFIX + n: t for n, t in kept.items()})
    config = {**config, "architectures": [architecture]}
    config.setdefault("model_type", family.hf_model_types[0])
    if dtype is not None:
        config.setdefault("dtype", dtype)
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
        raise _NoFamily(f"spec {spec.name!r} (family {family}) cannot be exported to Hugging Face: {reason}")
    raise _NoFamily(f"spec {spec.name!r} has no Hugging Face equivalent in any family:\n  " + "\n  ".join(reasons))


class _NoFamily(CheckpointError):
    """No family expresses the spec: the message gives each family's reason."""
