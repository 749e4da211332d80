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
from itertools import chain
from pathlib import Path

import torch
import yaml
from torch import nn

from archcomposer.build import retie, skeleton, tied_parameters
from archcomposer.errors import CheckpointError, SpecError
from archcomposer.family import Family, TensorMap
from archcomposer.model import ComposedModel
from archcomposer.registry import get_registry
from archcomposer.spec import ModelSpecBase
from archcomposer.specfile import load_spec
from archcomposer.storage import (HF_CONFIG_FILE, INDEX_FILE, PROGRESS_MIN_BYTES, SPEC_FILE, WEIGHTS_FILE, Progress,
                                  TensorFiles, parse_size, refuse_pickle, write_atomically, write_tensors)
from archcomposer.tokenizer import find_tokenizer

DEFAULT_MAX_SHARD_SIZE = "5GB"
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
    tensor. The model is returned in eval mode and carries its spec as ``model.spec`` and the
    directory's tokenizer, ours or transformers', as ``model.tokenizer`` (None if it has none)."""
    directory = Path(path)
    spec, maps, describe, ignored = _read_checkpoint(directory)
    tokenizer = find_tokenizer(directory)
    with TensorFiles(directory) as files:
        model = _load(spec, maps, files, describe=describe, ignored=ignored, dtype=dtype,
                      device=torch.device(device) if device is not None else None, progress=progress)
    model.tokenizer = tokenizer
    return model


def checkpoint_spec(path: str | os.PathLike) -> ModelSpecBase:
    """The spec of a checkpoint directory (ours or Hugging Face's), without reading its tensors:
    what lets every command that takes a spec take a checkpoint too."""
    return _read_checkpoint(Path(path))[0]


def check_checkpoint(path: str | os.PathLike) -> ModelSpecBase:
    """The spec of a checkpoint directory, once its tensors are checked against the spec's model
    (every missing, unexpected and mis-shaped one, in one ``CheckpointError``) from the
    safetensors headers alone: no tensor data is read. What ``archcomposer validate`` runs."""
    directory = Path(path)
    spec, maps, describe, ignored = _read_checkpoint(directory)
    with TensorFiles(directory) as files:
        _check(spec, _without_absent_prefixes(maps, files), own_tensors(skeleton(spec)), files, describe, ignored)
    return spec


def _read_checkpoint(directory: Path) -> tuple[ModelSpecBase, list[TensorMap], str, tuple[str, ...]]:
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
    if not ((directory / WEIGHTS_FILE).is_file() or (directory / INDEX_FILE).is_file()):
        refuse_pickle(directory)
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}")
    if not ours:
        return _read_hf_config(directory)
    spec = load_spec(directory / SPEC_FILE)
    maps = [TensorMap(ours=name, theirs=(name,)) for name in own_tensors(skeleton(spec))]
    return spec, maps, "archcomposer checkpoint", ()


def family_for_model_type(model_type: str) -> Family:
    """The registered family that reads Hugging Face configs of ``model_type``."""
    families = [f for f, _ in get_registry().families.values()]
    for family in families:
        if model_type in family.hf_model_types and family.converts_hf:
            return family
    known = sorted(t for f in families if f.converts_hf for t in f.hf_model_types)
    raise CheckpointError(f"no registered family reads Hugging Face model_type {model_type!r}; "
                          f"known model types: {', '.join(known) or 'none'}")


def _read_hf_config(directory: Path) -> tuple[ModelSpecBase, list[TensorMap], str, tuple[str, ...]]:
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
    return (spec, family.hf_tensors(spec, architecture), f"Hugging Face {architecture} checkpoint",
            family.hf_ignored_tensors)


def _load(spec, maps, files, *, describe, ignored, dtype, device, progress) -> ComposedModel:
    model = skeleton(spec)
    expected = own_tensors(model)
    aliases = tied_parameters(model)
    maps = _without_absent_prefixes(maps, files)
    _check(spec, maps, expected, files, describe, ignored)
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
           ignored: tuple[str, ...] = ()) -> None:
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
    unexpected = sorted(n for n in set(files.names) - used if not any(re.search(p, n) for p in ignored))
    if missing or unexpected or misshaped:
        lines = [f"{files.directory}: the {describe} does not match spec {spec.name!r}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items]
        raise CheckpointError("\n".join(lines))


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
    express it) translates. A Hugging Face model has one head: with several, name it (``head=``).

    Weights above ``max_shard_size`` (bytes, or ``"500MB"``, ``"5GB"``) are split into shards with
    an index. ``model.tokenizer``, if set, is written too (in the same format), replacing any
    tokenizer there. The directory is written next to the target and renamed into place: an
    interrupted save leaves the previous checkpoint there intact. Other files in an existing
    target directory (a tokenizer, when the model has none) are kept. ``progress`` shows a
    progress line on stderr (default: for saves of 1 GiB or more)."""
    if format not in FORMATS:
        raise CheckpointError(f"format={format!r}: expected one of {FORMATS}")
    limit = parse_size(max_shard_size)
    own = {name: t.detach() for name, t in own_tensors(model).items()}
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
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    bar = Progress(f"saving {Path(path).name}", total,
                   enabled=progress if progress is not None else total >= PROGRESS_MIN_BYTES)

    def write(directory: Path) -> None:
        (directory / config_file).write_text(config_text)
        write_tensors(directory, tensors, limit, metadata, bar)
        if tokenizer is not None:
            tokenizer(directory)

    try:
        return write_atomically(Path(path), write)
    finally:
        bar.close()


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
