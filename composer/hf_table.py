"""Families as data. A family that reads and writes Hugging Face checkpoints declares three tables
and ``hf_family(...)`` turns them into a ``Family``:

- ``config``: rows that translate ``config.json`` to the spec and back. ``Key`` maps a config key
  to a spec field (with transformers' default for the key, and a named conversion where the two
  differ); ``Fixed`` is a spec field the family always has; ``Expect`` is a config flag honoured
  only at one value. What no row covers is a codec of the family's own: any object with
  ``to_spec(config, data)`` and ``to_config(spec, config)`` (``archcomposer.hf_codecs`` has the
  shared ones: RoPE, sliding windows).
- ``tensors``: our module <-> their module, ``{i}`` for each layer and ``{base}`` for the
  architecture's base-model prefix, with a transform where the layouts differ (``TRANSPOSED``
  for GPT-2's Conv1D, ``GROUPED_QKV`` for QKV fused per head or per KV group). Every parameter
  of our module (weight, bias, ...) maps to theirs of the same name; rows for parameters the
  spec at hand does not have (a bias that is off) are skipped, and a row with ``when`` applies to
  the layers it holds for.
- ``heads``: head kind -> their module; ``architectures``: theirs -> our head kind.

Export needs no list of what a family cannot express: the spec is written to a config, read back
through the same rows, and any field that comes back different is named in the error
(``attention.softcap = 30.0 has no equivalent in Hugging Face Qwen3: its config.json reads back
as None``). Fused and split projections are one computation in two layouts: a model with fused
``qkv.proj`` (or ``gate_up.proj``) exports to a checkpoint with separate q/k/v (gate/up)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from archcomposer.errors import CheckpointError, SpecError
from archcomposer.family import Family, TensorMap
from archcomposer.hf_rope import position_from_hf, rope_parameters_of, rope_parameters_to_hf
from archcomposer.registry import get_registry
from archcomposer.spec import LAYER_SECTIONS, LayerSpec, ModelSpecBase

REQUIRED = object()  # a Key default: the config must have the key


def _set(data: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


_ABSENT = object()  # a spec field that the kind at hand does not have


def _get(spec: Any, path: str) -> Any:
    for part in path.split("."):
        spec = getattr(spec, part, _ABSENT) if spec is not None else None
        if spec is _ABSENT:
            break
    return spec


# ---------------------------------------------------------------------------------------------
# config rows


@dataclass(frozen=True)
class Key:
    """``config.json`` key ``hf`` <-> spec field ``ours`` (a dotted path: ``attention.num_heads``).

    hf: the key, or several (the first is written; the others are older names also read, such as
        GPT-2's ``n_embd`` for ``hidden_size``).
    default: the value when the config lacks the key (transformers' default for it); ``REQUIRED``
        refuses such a config.
    read / write: their value -> ours / ours -> theirs, where they differ (``ACTIVATION``)."""

    hf: str | tuple[str, ...]
    ours: str
    default: Any = REQUIRED
    read: Callable[[Any], Any] | None = None
    write: Callable[[Any], Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.hf,) if isinstance(self.hf, str) else self.hf

    def to_spec(self, config: dict, data: dict) -> None:
        name = next((n for n in self.names if n in config), None)
        if name is None and self.default is REQUIRED:
            raise CheckpointError(f"config.json has no {self.names[0]!r}")
        value = config[name] if name is not None else self.default
        _set(data, self.ours, self.read(value) if self.read is not None and value is not None else value)

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        value = _get(spec, self.ours)
        if value is _ABSENT:  # another kind (the read-back check names it)
            return
        config[self.names[0]] = self.write(value) if self.write is not None and value is not None else value


@dataclass(frozen=True)
class Fixed:
    """A spec field every model of the family has (``norm.kind: rmsnorm``)."""

    ours: str
    value: Any

    def to_spec(self, config: dict, data: dict) -> None:
        _set(data, self.ours, self.value)

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        pass  # the read-back check refuses a spec with another value


@dataclass(frozen=True)
class Expect:
    """A config flag honoured only at ``value``: another value is refused on import (``why``
    says what it would change), and export writes ``value``."""

    hf: str
    value: Any
    why: str = ""

    def to_spec(self, config: dict, data: dict) -> None:
        got = config.get(self.hf, self.value)
        if got != self.value:
            raise CheckpointError(f"config.json {self.hf} = {got!r} is not supported (only {self.value!r})"
                                  + (f": {self.why}" if self.why else ""))

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        config[self.hf] = self.value


@dataclass(frozen=True)
class Flag:
    """A boolean config key that switches an optional spec section on: true sets ``ours`` to
    ``value(config)`` (Phi's ``qk_layernorm`` -> ``attention.qk_norm``), false leaves it unset.
    Export writes whether the spec has it; the read-back check compares the section itself."""

    hf: str
    ours: str
    value: Callable[[dict], Any]
    default: bool = False

    def to_spec(self, config: dict, data: dict) -> None:
        if config.get(self.hf, self.default):
            _set(data, self.ours, self.value(config))

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        config[self.hf] = _get(spec, self.ours) not in (None, _ABSENT)


#: transformers' ``hidden_act`` names -> ours, and back.
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def _activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"config.json activation {name!r} is not supported; supported: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def Activation(hf: str | tuple[str, ...], ours: str = "mlp.activation", default: Any = "silu") -> Key:
    """An activation name (``hidden_act``) <-> ours."""
    return Key(hf, ours, default, read=_activation, write=ACTIVATIONS_TO_HF.__getitem__)


def reciprocal(x: float) -> float:
    """For a config value the reference divides by where the spec multiplies (Granite's
    ``logits_scaling``)."""
    return 1.0 / x


# ---------------------------------------------------------------------------------------------
# tensor transforms


@dataclass(frozen=True)
class Transform:
    """How their tensor(s) become ours and back, per parameter (``weight``, ``bias``) of a layer
    (``layer`` is None outside the layers). Both must be inverse and must not modify inputs."""

    name: str
    to_ours: Callable[[tuple[torch.Tensor, ...], str, LayerSpec | None], torch.Tensor]
    to_theirs: Callable[[torch.Tensor, str, LayerSpec | None], tuple[torch.Tensor, ...]]


def _transpose_weight(t: torch.Tensor, param: str) -> torch.Tensor:
    return t.t().contiguous() if param == "weight" else t


#: GPT-2's Conv1D stores a weight as [in, out], nn.Linear as [out, in].
TRANSPOSED = Transform("transposed", lambda ts, p, layer: _transpose_weight(ts[0], p),
                       lambda t, p, layer: (_transpose_weight(t, p),))


def _grouped_sizes(layer: LayerSpec) -> tuple[int, int, int]:
    a = layer.attention
    return a.num_kv_heads, a.num_heads // a.num_kv_heads, a.head_dim


def _grouped_to_ours(ts, param, layer):
    Hkv, g, Dh = _grouped_sizes(layer)
    x = ts[0].unflatten(0, (Hkv, g + 2, Dh))  # [Hkv, g+2, Dh, ...]: per KV group, its g queries, k, v
    return torch.cat([x[:, :g].flatten(0, 2), x[:, g].flatten(0, 1), x[:, g + 1].flatten(0, 1)])  # [q | k | v]


def _grouped_to_theirs(t, param, layer):
    Hkv, g, Dh = _grouped_sizes(layer)
    q, k, v = t.split([Hkv * g * Dh, Hkv * Dh, Hkv * Dh])
    groups = [q.unflatten(0, (Hkv, g, Dh)), k.unflatten(0, (Hkv, 1, Dh)), v.unflatten(0, (Hkv, 1, Dh))]
    return (torch.cat(groups, dim=1).flatten(0, 2),)  # [Hkv, g+2, Dh, ...] -> rows


#: QKV fused per KV group: rows [Hkv, g + 2, Dh] (each group's g query heads, its key, its value)
#: against ours [q | k | v]. BLOOM and GPT-NeoX are the g = 1 case ([H, 3, Dh]); Falcon's new
#: decoder architecture the general one.
GROUPED_QKV = Transform("grouped_qkv", _grouped_to_ours, _grouped_to_theirs)


# ---------------------------------------------------------------------------------------------
# the family


@dataclass(frozen=True)
class Tensor:
    """Our module ``ours`` <-> their module ``theirs`` (``{i}``: each layer; ``{base}``: the
    architecture's base-model prefix), each parameter under the same name."""

    ours: str
    theirs: str
    transform: Transform | None = None
    #: A row for the layers where this holds (``{i}`` rows only): where their name for one of our
    #: modules depends on the layer's blocks (Falcon's norms follow its wiring). None: every layer.
    when: Callable[[LayerSpec], bool] | None = None


@dataclass(frozen=True)
class HFTable:
    """A family's translation as data (see the module docstring).

    display: the family's name in messages (``Hugging Face Qwen3``).
    base: the base-model prefix of the head architectures (``model.``); ``bases`` overrides it per
        architecture. The bare model's is ``""``.
    head_fields: per head kind, head fields the family's transformers model fixes (GPT-J's LM head
        has a bias).
    head_config: per head kind, config rows for fields of that head (``ours`` a head field: Gemma 2's
        ``final_logit_softcapping`` is the causal LM head's ``softcap``).
    extra_tensors: ``(spec, architecture, base) -> [TensorMap]`` for tensors no row expresses."""

    display: str
    architectures: Mapping[str, str | None]
    config: Sequence[Any]
    tensors: Sequence[Tensor]
    heads: Mapping[str, str]
    model_types: tuple[str, ...]
    base: str = "model."
    bases: Mapping[str, str] = field(default_factory=dict)
    head_fields: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    head_config: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    extra_tensors: Callable[[ModelSpecBase, str, str], list[TensorMap]] | None = None
    #: Checkpoint tensors that are not weights (``Family.hf_ignored_tensors``), besides ``BUFFERS``.
    ignored: tuple[str, ...] = ()

    # -- config ------------------------------------------------------------------------------

    def spec_from_hf_config(self, config: dict, architecture: str) -> dict:
        data: dict[str, Any] = {}
        for row in self.config:
            row.to_spec(config, data)
        kind = self.architectures[architecture]
        data["heads"] = [] if kind is None else [self._head_from_hf(config, kind)]
        return data

    def _head_from_hf(self, config: dict, kind: str) -> dict:
        cls = get_registry().kinds["head"][kind][0]
        head = {"kind": kind, **cls.from_hf_config(config)}
        if "bias" in cls.model_fields:
            head["bias"] = cls.hf_bias
        for row in self.head_config.get(kind, ()):
            row.to_spec(config, head)
        return {**head, **self.head_fields.get(kind, {})}

    def hf_config_from_spec(self, spec: ModelSpecBase, architecture: str) -> dict:
        config: dict[str, Any] = {"model_type": self.model_types[0]}
        for row in self.config:
            row.to_config(spec, config)
        if spec.heads:
            config.update(spec.heads[0].hf_config())
            for row in self.head_config.get(spec.heads[0].kind, ()):
                row.to_config(spec.heads[0], config)
        self._require_read_back(spec, config, architecture)
        return config

    def _require_read_back(self, spec: ModelSpecBase, config: dict, architecture: str) -> None:
        """Refuse a spec that the config would not give back, naming the first field that differs."""
        from archcomposer.specfile import load_spec

        data = {**self.spec_from_hf_config(config, architecture), "name": spec.name, "family": spec.family}
        try:
            back = load_spec(data)
        except SpecError as exc:
            raise CheckpointError(f"its Hugging Face {self.display} config.json reads back as an invalid spec "
                                  f"(a bug in the family's table): {exc}") from None
        for path, ours, theirs in _differences(spec, back):
            raise CheckpointError(f"{path} = {ours!r} has no equivalent in Hugging Face {self.display}: its "
                                  f"config.json reads back as {theirs!r}{self._shared_key(spec, _field(path))}")

    def _shared_key(self, spec: ModelSpecBase, path: str) -> str:
        """Where ``path`` differs because one config key holds it and another field of another value
        (GPT-NeoX's ``attention_bias``: q/k/v and output biases), say so."""
        for row in self.config:
            if isinstance(row, Key) and row.ours == path:
                others = [r.ours for r in self.config if isinstance(r, Key) and r is not row
                          and r.names[0] == row.names[0] and _get(spec, r.ours) not in (_ABSENT, _get(spec, path))]
                if others:
                    return f" ({row.names[0]} is both {path} and {', '.join(others)})"
        return ""

    def config_keys(self) -> dict[str, tuple[str, ...]]:
        """Spec field -> the config keys it is read from, for the ``Key`` rows (``Family.hf_config_keys``)."""
        keys: dict[str, tuple[str, ...]] = {}
        for row in self.config:
            if isinstance(row, Key):
                keys.setdefault(row.ours, row.names)
        return keys

    # -- tensors -----------------------------------------------------------------------------

    def base_of(self, architecture: str) -> str:
        if self.architectures[architecture] is None:
            return self.bases.get(architecture, "")
        return self.bases.get(architecture, self.base)

    def hf_tensors(self, spec: ModelSpecBase, architecture: str) -> list[TensorMap]:
        from archcomposer.build import skeleton
        from archcomposer.checkpoint import own_tensors

        own = own_tensors(skeleton(spec))
        params: dict[str, list[str]] = {}  # our module -> its parameter names
        for name in own:
            module, _, param = name.rpartition(".")
            params.setdefault(module, []).append(param)
        base = self.base_of(architecture)
        rows: list[tuple[str, str, Transform | None, LayerSpec | None]] = []
        for row in self.tensors:
            layers = range(spec.num_layers) if "{i}" in row.ours else [None]
            if row.when is not None:
                layers = [i for i in layers if i is not None and row.when(spec.layer_specs[i])]
            rows += [(row.ours.format(i=i), row.theirs.format(i=i, base=base), row.transform,
                      None if i is None else spec.layer_specs[i]) for i in layers]
        # A tied head's weight is the embedding's (not in ``params``); its bias, if any, is its own.
        rows += [(f"heads.{h.kind}.proj", self.heads[h.kind], None, None) for h in spec.heads]
        maps, fused = [], {}
        for ours, theirs, transform, layer in rows:
            parent, _, part = ours.rpartition(".")
            if ours not in params and f"{parent}.proj" in params:  # theirs split, ours fused
                fused.setdefault(parent, []).append(theirs)
                continue
            for param in params.get(ours, []):
                maps.append(_tensor_map(f"{ours}.{param}", f"{theirs}.{param}", transform, param, layer))
        for parent, parts in fused.items():
            sizes = _fused_sizes(spec, parent, own, len(parts))
            for param in params[f"{parent}.proj"]:
                maps.append(TensorMap(f"{parent}.proj.{param}", tuple(f"{t}.{param}" for t in parts),
                                      to_ours=lambda *ts: torch.cat(ts), to_theirs=partial(_split, sizes=sizes)))
        if self.extra_tensors is not None:
            maps += self.extra_tensors(spec, architecture, base)
        return maps


def _tensor_map(ours: str, theirs: str, transform: Transform | None, param: str, layer) -> TensorMap:
    if transform is None:
        return TensorMap(ours, theirs)
    return TensorMap(ours, theirs, to_ours=lambda *ts: transform.to_ours(ts, param, layer),
                     to_theirs=lambda t: transform.to_theirs(t, param, layer))


def _split(t: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    return tuple(part.contiguous() for part in t.split(sizes))


def _fused_sizes(spec: ModelSpecBase, parent: str, own: dict, parts: int) -> list[int]:
    """The row sizes of the parts of our fused projection ``parent`` (q/k/v or gate/up)."""
    rows = own[f"{parent}.proj.weight"].shape[0]
    if parts == 3:  # q, k, v of this layer's attention
        a = spec.layer_specs[int(parent.split(".")[1])].attention
        return [a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.num_kv_heads * a.head_dim]
    return [rows // parts] * parts


#: Layout-only spec fields: the same computation stored fused or split; the tensor maps convert
#: a fused model to a split checkpoint (the other way is refused by the read-back check).
_LAYOUT_FIELDS = ("fused_qkv", "fused")


def _differences(spec: ModelSpecBase, back: ModelSpecBase):
    """(path, ours, theirs) for each field where ``back`` differs from ``spec``: the model-wide
    fields, then each section of each layer (named with the layers where only some differ)."""
    exclude = {"name", "family", "layers", "layer_types", *LAYER_SECTIONS}
    yield from _dict_differences(spec.model_dump(mode="json", exclude=exclude),
                                 back.model_dump(mode="json", exclude=exclude), "")
    found: dict[tuple, list[int]] = {}
    for i, (ours, theirs) in enumerate(zip(spec.layer_specs, back.layer_specs)):  # equal layers share a LayerSpec
        for name in LAYER_SECTIONS:
            a, b = getattr(ours, name).model_dump(mode="json"), getattr(theirs, name).model_dump(mode="json")
            for diff in _dict_differences(a, b, name):
                found.setdefault(_hashable(diff), []).append(i)
    for (path, ours, theirs), layers in found.items():
        where = "" if len(layers) == spec.num_layers else f" (layers {', '.join(map(str, layers))})"
        yield path + where, ours, theirs


def _field(path: str) -> str:
    """A difference's field path without the layers it names (``attention.qkv_bias (layers 0, 2)``)."""
    return path.split(" (")[0]


def _hashable(diff):
    path, a, b = diff
    return path, _freeze(a), _freeze(b)


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _dict_differences(a: Any, b: Any, path: str):
    if isinstance(a, dict) and isinstance(b, dict) and a.get("kind") == b.get("kind"):
        for key in [*a, *(k for k in b if k not in a)]:
            if key in _LAYOUT_FIELDS and a.get(key) is True:
                continue
            yield from _dict_differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and any(isinstance(x, dict) for x in a):
        for k, (x, y) in enumerate(zip(a, b)):  # heads: name the field of the head that differs
            yield from _dict_differences(x, y, f"{path}.{k}")
    elif isinstance(a, float) and isinstance(b, float):
        if not math.isclose(a, b, rel_tol=1e-9):
            yield path, a, b
    elif a != b:
        yield (f"{path}.kind", a.get("kind"), b.get("kind")) if isinstance(a, dict) and isinstance(b, dict) \
            else (path, a, b)


#: Buffers older transformers versions saved in checkpoints of every RoPE family, skipped on load.
BUFFERS = (r"\.rotary_emb\.inv_freq$",)


def hf_family(*, name: str, description: str, table: HFTable) -> Family:
    """The ``Family`` a plugin registers for a table."""
    return Family(name=name, description=description, hf_model_types=table.model_types,
                  hf_architectures=table.architectures, spec_from_hf_config=table.spec_from_hf_config,
                  hf_config_from_spec=table.hf_config_from_spec, hf_tensors=table.hf_tensors,
                  hf_ignored_tensors=BUFFERS + tuple(table.ignored), hf_config_keys=table.config_keys())


# ---------------------------------------------------------------------------------------------
# shared rows


class Rope:
    """``rope_parameters`` (or the older top-level ``rope_theta`` and ``rope_scaling``) <-> the
    position section, with every scaling ``archcomposer.hf_rope`` translates.

    theta: transformers' default ``rope_theta`` for the family. fraction: its default
    ``partial_rotary_factor`` where the family rotates part of each head (GLM, Phi, GPT-NeoX),
    None where it rotates all of it; a fraction of 1 reads as ``rope``, less as ``partial_rope``.
    interleaved: rotates adjacent pairs (GLM, Cohere, GPT-J) rather than halves. Runs after the
    row that sets ``max_positions``."""

    def __init__(self, *, theta: float = 10000.0, fraction: float | None = None, interleaved: bool = False):
        self.theta, self.fraction, self.interleaved = theta, fraction, interleaved

    def to_spec(self, config: dict, data: dict) -> None:
        rope = rope_parameters_of(config, default_theta=self.theta)
        if self.fraction is None:  # the family's rotary rotates the whole head, whatever the config says
            rope.pop("partial_rotary_factor", None)
        data["position"] = position_from_hf(rope, max_positions=data["max_positions"],
                                            fraction=self.fraction if self.fraction is not None else 1.0,
                                            interleaved=self.interleaved)

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        if spec.position.kind not in ("rope", "partial_rope"):
            return  # the read-back check names position.kind
        rope = rope_parameters_to_hf(spec.position, max_positions=spec.max_positions)
        if self.fraction is not None:
            rope.setdefault("partial_rotary_factor", 1.0)
        else:  # not read back: a partial_rope spec is named by the read-back check
            rope.pop("partial_rotary_factor", None)
        config["rope_parameters"] = rope


def parallel_residual(*, default: bool, shared_norm: bool) -> Key:
    """``use_parallel_residual`` (GPT-NeoX, StableLM): attention and MLP side by side (``parallel``,
    with one norm or one each) or one after the other (``pre_norm``). It sets the whole wiring
    section, so rows for the wiring's other fields (dropout) come after it."""
    parallel = {"kind": "parallel", "shared_norm": shared_norm}
    return Key("use_parallel_residual", "wiring", default,
               read=lambda on: dict(parallel) if on else {"kind": "pre_norm"},
               write=lambda wiring: wiring.kind == "parallel")


class FourTimesHidden:
    """``mlp.intermediate_size`` = 4 x hidden_size, which no config key says (BLOOM, MPT); runs
    after the row that sets ``hidden_size``. Export writes nothing: the read-back check refuses
    another width."""

    def to_spec(self, config: dict, data: dict) -> None:
        data.setdefault("mlp", {})["intermediate_size"] = 4 * data["hidden_size"]

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        pass


def without(rows: Sequence[Any], *names: str) -> list:
    """``rows`` but those for the spec fields (``attention.out_bias``) or config flags (an
    ``Expect``'s key) in ``names``, which a family translates otherwise."""
    return [row for row in rows if getattr(row, "ours", None) not in names and getattr(row, "hf", None) not in names]


def token_ids(*, pad: Any = None, bos: Any = 1, eos: Any = 2) -> list[Key]:
    """``pad_token_id``, ``bos_token_id``, ``eos_token_id`` with the family's defaults."""
    return [Key("pad_token_id", "pad_token_id", pad), Key("bos_token_id", "bos_token_id", bos),
            Key("eos_token_id", "eos_token_id", eos)]


def llama_config(*, vocab_size: int = 32000, max_positions: int = 2048, eps: float = 1e-6, heads: int = 32,
                 attention_bias: Any = False, tied: bool = False, act: str = "silu", hidden_size: int = 4096,
                 layers: int = 32, kv_heads: int | None = None, head_dim: int | None = None,
                 intermediate_size: int = 11008) -> list:
    """Rows of the Llama layout's config (transformers' LlamaConfig keys; the defaults are each
    family's own): RMSNorm, GQA, gated MLP, pre-norm layers, ``attention_bias`` on q/k/v and o.
    A family adds its position codec and token ids, and replaces rows it has otherwise (``without``).
    ``is_causal`` false (transformers' masks then attend both ways) is refused."""
    return [
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "rmsnorm"), Fixed("attention.kind", "gqa"),
        Fixed("mlp.kind", "gated"), Fixed("wiring.kind", "pre_norm"),
        Key("vocab_size", "vocab_size", vocab_size),
        Key("hidden_size", "hidden_size", hidden_size),
        Key("num_hidden_layers", "num_layers", layers),
        Key("max_position_embeddings", "max_positions", max_positions),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", tied),
        Key("num_attention_heads", "attention.num_heads", heads),
        Key("num_key_value_heads", "attention.num_kv_heads", kv_heads),
        Key("head_dim", "attention.head_dim", head_dim),
        Key("attention_bias", "attention.qkv_bias", attention_bias),
        Key("attention_bias", "attention.out_bias", attention_bias),
        Key("attention_dropout", "attention.dropout", 0.0),
        Key("rms_norm_eps", "norm.eps", eps),
        Key("intermediate_size", "mlp.intermediate_size", intermediate_size),
        Activation("hidden_act", default=act),
        Key("mlp_bias", "mlp.bias", False),
        Expect("is_causal", True, "transformers' masks then let every token attend to every other (bidirectional)"),
    ]


#: The Llama layout's tensors (Llama, Mistral, Qwen, Seed-OSS, Granite, ...).
LLAMA_TENSORS = (
    Tensor("embedding.tokens", "{base}embed_tokens"),
    Tensor("final_norm", "{base}norm"),
    Tensor("layers.{i}.attn_norm", "{base}layers.{i}.input_layernorm"),
    Tensor("layers.{i}.attention.qkv.q", "{base}layers.{i}.self_attn.q_proj"),
    Tensor("layers.{i}.attention.qkv.k", "{base}layers.{i}.self_attn.k_proj"),
    Tensor("layers.{i}.attention.qkv.v", "{base}layers.{i}.self_attn.v_proj"),
    Tensor("layers.{i}.attention.out", "{base}layers.{i}.self_attn.o_proj"),
    Tensor("layers.{i}.mlp_norm", "{base}layers.{i}.post_attention_layernorm"),
    Tensor("layers.{i}.mlp.gate_up.gate", "{base}layers.{i}.mlp.gate_proj"),
    Tensor("layers.{i}.mlp.gate_up.up", "{base}layers.{i}.mlp.up_proj"),
    Tensor("layers.{i}.mlp.down", "{base}layers.{i}.mlp.down_proj"),
)

#: Head kind -> module, as most transformers decoders name them.
HEADS = {"causal_lm": "lm_head", "sequence_classification": "score", "token_classification": "score",
         "question_answering": "qa_outputs"}


# ---------------------------------------------------------------------------------------------
# mixture of experts


def expert_tensors(*, experts: str, gate: str, up: str, down: str) -> Callable[[ModelSpecBase, str, str], list]:
    """``extra_tensors`` for the routed experts of every MoE layer: our 3-D ``gate_up_proj``
    [E, 2I, D] and ``down_proj`` [E, D, I] <-> the per-expert Linears transformers writes
    (``{experts}.{e}.{gate|up|down}.weight``; ``experts`` with ``{i}`` and ``{base}``)."""

    def maps(spec: ModelSpecBase, architecture: str, base: str) -> list[TensorMap]:
        out = []
        for i, layer in enumerate(spec.layer_specs):
            if layer.mlp.kind != "moe":
                continue
            E = layer.mlp.num_experts
            prefix = experts.format(i=i, base=base)
            names = {part: tuple(f"{prefix}.{e}.{part}.weight" for e in range(E)) for part in (gate, up, down)}
            out.append(TensorMap(f"layers.{i}.mlp.experts.gate_up_proj", names[gate] + names[up],
                                 to_ours=partial(_stack_gate_up, experts=E), to_theirs=_unstack_gate_up))
            out.append(TensorMap(f"layers.{i}.mlp.experts.down_proj", names[down],
                                 to_ours=lambda *ts: torch.stack(ts), to_theirs=_unstack))
        return out

    return maps


def _stack_gate_up(*ts: torch.Tensor, experts: int) -> torch.Tensor:
    return torch.cat([torch.stack(ts[:experts]), torch.stack(ts[experts:])], dim=1)  # [E, 2I, D]


def _unstack_gate_up(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    gate, up = t.chunk(2, dim=1)  # 2 x [E, I, D]
    return _unstack(gate) + _unstack(up)


def _unstack(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(x.clone() for x in t.unbind(0))  # each its own storage, as a checkpoint stores it
