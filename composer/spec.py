"""The spec schema: pydantic v2 models, one per block kind, grouped into discriminated unions by
``kind``. Every model forbids unknown fields and is frozen.

Each block-kind model also knows how to build its block: ``build(ctx)`` receives a
``BuildContext`` (the whole spec, the layer being built, shared modules such as the embedding)
and returns an ``nn.Module`` built from plain keyword arguments; ``check(ctx)`` states rules that
need the whole spec. This module, with ``archcomposer.model``, is the only place that reads a spec
and constructs modules. Plugins add kinds by subclassing a section base (``PositionSpec``,
``NormSpec``, ...) with a ``kind: Literal[...]`` and registering the class (see
``archcomposer.registry``).

Sections and where they apply: ``embedding`` turns the input into the first hidden states;
``position``, ``attention``, ``norm``, ``mlp`` and ``wiring`` make up each layer (``layers``
changes them for some layers); ``norm`` also builds the final norm and any embedding norm;
``heads`` read the final hidden states."""

from __future__ import annotations

import math
import types
from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import annotated_types
import torch
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat, PrivateAttr, SerializeAsAny,
                      TypeAdapter, ValidationError, field_validator, model_validator)
from torch import nn

from archcomposer import inputs, outputs
from archcomposer.errors import InputError
from archcomposer.blocks import attention, embedding, heads, layer, mlp, norm, position, projection

# The largest values a spec accepts, so that a model that cannot exist is refused here rather
# than inside torch (or after hours of building). Widths, counts and indices: a weight is at most
# a product of three of them (a fused projection's [3 x heads x head_dim, hidden]), which then
# stays inside what torch can address (a storage's size in bytes is an int64).
MAX_WIDTH = 2**19
#: Vocabulary sizes, sequence lengths and windows: a weight multiplies one by a width at most.
MAX_LENGTH = 2**30
#: Layers are built, and resolved at validation, one by one.
MAX_LAYERS = 2**12


def _bounded(high: int, what: str, *, positive: bool = True):
    """An int > 0 (or >= 0) and <= ``high``; beyond ``high`` the message says why there is a bound."""
    def refuse_beyond(value):
        if type(value) is int and value > high:
            raise ValueError(f"{value:,} is more than {high:,}, {what}")
        return value

    return Annotated[int, annotated_types.Gt(0) if positive else annotated_types.Ge(0), annotated_types.Le(high),
                     BeforeValidator(refuse_beyond)]


_WIDTH_WHY = ("the largest width, count or index a spec accepts (2**19; published models stay below 2**17, and "
              "larger widths give weights beyond what torch can address)")
#: Every width, count and index of the built-in kinds (pydantic's PositiveInt and NonNegativeInt, bounded).
PositiveInt = _bounded(MAX_WIDTH, _WIDTH_WHY)
NonNegativeInt = _bounded(MAX_WIDTH, _WIDTH_WHY, positive=False)
#: A vocabulary size, a sequence length or a window.
Length = _bounded(MAX_LENGTH, "the largest vocabulary, length or window a spec accepts (2**30; published "
                              "models stay below 2**24)")
LayerCount = _bounded(MAX_LAYERS, "the most layers a spec accepts (2**12; the deepest published models have "
                                  "about 200)")


class Strict(BaseModel):
    """Base of every spec model, plugins' included. ``strict``: an int field takes an int only (not
    ``true``, ``64.0`` or ``"64"``), a bool field a bool only (not ``1`` or ``"yes"``), a str field
    a str; a float field takes an int too. ``allow_inf_nan``: every float is finite (an infinite
    eps, theta or std builds a model that silently computes nothing useful)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, data):
        # YAML and JSON have lists only, which strict mode would refuse for a tuple field.
        if isinstance(data, dict):
            tuples = {name for name, field in cls.model_fields.items() if _is_tuple(field.annotation)}
            if tuples & data.keys():
                data = {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in data.items()}
        return data

    def check(self, ctx: BuildContext) -> None:
        """Rules that need the whole spec (``ctx.spec``) or the layer (``ctx.layer_spec``);
        raise ``ValueError`` naming the fields involved."""

    # What a block kind says about its own size (``archcomposer.summary``). ``module`` is the block
    # this spec built (on the meta device); a kind overrides these where the defaults do not hold.

    def active_parameters(self, module: nn.Module) -> int:
        """Parameters of ``module`` one token computes with: all of them, unless the kind routes
        each token through a part of itself (a mixture of experts counts its chosen experts)."""
        return sum(p.numel() for p in module.parameters())

    def flops_per_token(self, module: nn.Module, *, keys: int) -> int:
        """Forward FLOPs ``module`` spends on one token that attends to ``keys`` key slots: by
        default its linear layers, 2 per weight (a multiply and an add). Only matrix products are
        counted, as torch's ``FlopCounterMode`` counts them; elementwise work (norms, activations,
        rotations, softmax) is O(width) per token and left out."""
        return linear_flops(module)


def _is_tuple(annotation) -> bool:
    """Whether a field's type is a tuple (or a union holding one: ``tuple[int, int] | None``)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_tuple(get_args(annotation)[0])
    return origin is tuple or origin in (Union, types.UnionType) and any(_is_tuple(a) for a in get_args(annotation))


class SpecRuleError(ValueError):
    """A rule broken at a known place in the spec: ``loc`` is the field path (as pydantic's), so
    the error is reported at that field's line."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc


@dataclass(frozen=True)
class LayerSpec:
    """The blocks of one layer, after the spec's ``layers`` overrides."""

    index: int
    position: PositionSpec
    attention: AttentionSpec
    norm: NormSpec
    mlp: MLPSpec
    wiring: WiringSpec


#: The sections that make up a layer, which ``layers`` may change per layer.
LAYER_SECTIONS = ("position", "attention", "norm", "mlp", "wiring")


@dataclass(frozen=True)
class BuildContext:
    """What every ``build`` and ``check`` receives: the whole spec, the layer being built (None
    outside the layers) and the modules built so far that others share (the embedding, which a
    tied LM head reuses)."""

    spec: ModelSpecBase
    layer: int | None = None
    embedding: nn.Module | None = None

    @property
    def layer_spec(self) -> LayerSpec:
        """This layer's blocks (the first layer's outside the layers)."""
        return self.spec.layer_specs[self.layer if self.layer is not None else 0]

    def at(self, layer: int) -> BuildContext:
        return BuildContext(self.spec, layer, self.embedding)


def _linear(fan_in: int, fan_out: int, bias: bool) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, bias=bias)


def linear_flops(module: nn.Module) -> int:
    """Forward FLOPs per token of every ``nn.Linear`` in ``module``: 2 per weight."""
    return sum(2 * m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


# ---------------------------------------------------------------------------------------------
# position


class PositionSpec(Strict):
    """Base of position schemes. ``build`` returns a module whose forward is
    ``(query_pos, key_pos, query_seg, key_seg) -> blocks.position.PositionEncoding``; the model
    calls it once per forward for all the layers that share the scheme."""

    kind: str

    @abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module: ...


def _rotated_head_dim(ctx: BuildContext, kind: str) -> int:
    """The per-head width a rotary scheme rotates: the layer's attention ``head_dim``."""
    attn = ctx.layer_spec.attention
    head_dim = attn.position_head_dim
    if head_dim is None:
        raise ValueError(f"position.kind {kind!r} rotates the channels of each attention head, but "
                         f"attention.kind {attn.kind!r} has no head_dim for it to rotate")
    return head_dim


class NoPositionSpec(PositionSpec):
    """No position signal."""

    kind: Literal["none"]

    def build(self, ctx):
        return position.NoPosition()


class RopeScalingSpec(Strict):
    """Base of the RoPE frequency scalings, one per transformers ``rope_parameters.rope_type``
    (leaving ``scaling`` out is ``default``). Fields follow transformers' names and defaults, with
    ``original_max_positions`` for ``original_max_position_embeddings``; left out, it is the
    spec's ``max_positions`` (as transformers fills it in from ``max_position_embeddings``)."""

    type: str

    def check(self, ctx: BuildContext, *, rotary_dim: int) -> None:
        """Rules that need the rotated width; raise ``ValueError`` naming the fields."""

    @abstractmethod
    def build(self, ctx: BuildContext) -> position.RopeScaling: ...


def _original_max_positions(scaling: RopeScalingSpec, ctx: BuildContext) -> int:
    """The scaling's ``original_max_positions``, or the spec's ``max_positions`` when left out."""
    return scaling.original_max_positions or ctx.spec.max_positions


class LinearScalingSpec(RopeScalingSpec):
    """Position interpolation: frequencies divided by ``factor`` (SuperHOT, Gemma 3's global layers)."""

    type: Literal["linear"]
    factor: PositiveFloat

    def build(self, ctx):
        return position.LinearScaling(factor=self.factor)


class DynamicScalingSpec(RopeScalingSpec):
    """Dynamic NTK (InternLM2): past ``original_max_positions`` the base grows with the length a
    forward reaches, so the frequencies change as a sequence grows (transformers' ``dynamic``)."""

    type: Literal["dynamic"]
    factor: PositiveFloat
    original_max_positions: Length | None = None

    def check(self, ctx, *, rotary_dim):
        if rotary_dim < 4:
            raise ValueError(f"position.scaling.type 'dynamic' needs at least 4 rotated channels (its exponent is "
                             f"rotary_dim / (rotary_dim - 2)), got {rotary_dim}")

    def build(self, ctx):
        return position.DynamicNTKScaling(factor=self.factor,
                                          original_max_positions=_original_max_positions(self, ctx))


class YarnScalingSpec(RopeScalingSpec):
    """YaRN (Qwen2.5 long context, DeepSeek-V2/V3). ``attention_factor`` left out is
    ``0.1 ln(factor) + 1``, or DeepSeek's ratio when ``mscale`` and ``mscale_all_dim`` are given."""

    type: Literal["yarn"]
    factor: PositiveFloat
    original_max_positions: Length | None = None
    beta_fast: PositiveFloat = 32.0
    beta_slow: PositiveFloat = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: PositiveFloat | None = None
    truncate: bool = True

    def build(self, ctx):
        attention_factor = self.attention_factor
        if attention_factor is None:
            attention_factor = position.yarn_attention_factor(self.factor, self.mscale, self.mscale_all_dim)
        return position.YarnScaling(factor=self.factor, original_max_positions=_original_max_positions(self, ctx),
                                    attention_factor=attention_factor, beta_fast=self.beta_fast,
                                    beta_slow=self.beta_slow, truncate=self.truncate)


class LongRopeScalingSpec(RopeScalingSpec):
    """LongRoPE (Phi-3 and Phi-3.5 long-context, Phi-4-mini): a factor per frequency, short ones
    within ``original_max_positions`` and long ones past it. ``factor`` (transformers' optional one,
    default ``max_positions / original_max_positions``) only sets the default ``attention_factor``,
    ``sqrt(1 + ln(factor) / ln(original_max_positions))``."""

    type: Literal["longrope"]
    short_factor: tuple[PositiveFloat, ...]
    long_factor: tuple[PositiveFloat, ...]
    factor: PositiveFloat | None = None
    original_max_positions: Length | None = None
    attention_factor: PositiveFloat | None = None

    def check(self, ctx, *, rotary_dim):
        for name in ("short_factor", "long_factor"):
            if len(getattr(self, name)) != rotary_dim // 2:
                raise ValueError(f"position.scaling.{name} has {len(getattr(self, name))} entries; expected one per "
                                 f"rotated channel pair, rotary_dim / 2 = {rotary_dim // 2}")

    def build(self, ctx):
        original = _original_max_positions(self, ctx)
        attention_factor = self.attention_factor
        if attention_factor is None:
            factor = self.factor if self.factor is not None else ctx.spec.max_positions / original
            attention_factor = position.longrope_attention_factor(factor, original)
        return position.LongRopeScaling(short_factor=self.short_factor, long_factor=self.long_factor,
                                        original_max_positions=original, attention_factor=attention_factor)


class Llama3ScalingSpec(RopeScalingSpec):
    """Llama 3.1's scaling (Llama 3.1-3.3); the frequency factors default to Llama 3.1's."""

    type: Literal["llama3"]
    factor: PositiveFloat
    low_freq_factor: PositiveFloat = 1.0
    high_freq_factor: PositiveFloat = 4.0
    original_max_positions: Length | None = None

    @model_validator(mode="after")
    def _factors_ordered(self):
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"high_freq_factor ({self.high_freq_factor}) must exceed "
                             f"low_freq_factor ({self.low_freq_factor})")
        return self

    def build(self, ctx):
        return position.Llama3Scaling(factor=self.factor, low_freq_factor=self.low_freq_factor,
                                      high_freq_factor=self.high_freq_factor,
                                      original_max_positions=_original_max_positions(self, ctx))


#: The scalings a rotary position kind takes, told apart by ``type``.
RopeScalingKind = Annotated[LinearScalingSpec | DynamicScalingSpec | YarnScalingSpec | LongRopeScalingSpec
                            | Llama3ScalingSpec, Field(discriminator="type")]


class RopeSpec(PositionSpec):
    """Rotary embedding over the whole head, rotating the two halves (Llama, Seed-OSS);
    ``scaling`` rescales its frequencies for long contexts."""

    kind: Literal["rope"]
    theta: PositiveFloat = 10000.0
    scaling: RopeScalingKind | None = None

    def check(self, ctx):
        d = _rotated_head_dim(ctx, self.kind)
        if d % 2:
            raise ValueError(f"position.kind 'rope' needs an even attention.head_dim, got {d}")
        if self.scaling is not None:
            self.scaling.check(ctx, rotary_dim=d)

    def build(self, ctx):
        d = _rotated_head_dim(ctx, self.kind)
        return position.Rotary(head_dim=d, rotary_dim=d, theta=self.theta, interleaved=False,
                               scaling=self.scaling.build(ctx) if self.scaling is not None else None)


class PartialRopeSpec(PositionSpec):
    """Rotary embedding over a fraction of each head (GLM-4 rotates half, in adjacent pairs;
    GPT-NeoX and Phi rotate the halves of their part); ``scaling`` as for ``rope``."""

    kind: Literal["partial_rope"]
    theta: PositiveFloat = 10000.0
    fraction: float = Field(0.5, gt=0.0, le=1.0)
    interleaved: bool = True
    scaling: RopeScalingKind | None = None

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.fraction)

    def check(self, ctx):
        d = _rotated_head_dim(ctx, self.kind)
        width = self.rotary_dim(d)
        if width < 2 or width % 2 or width != d * self.fraction:
            raise ValueError(f"position.fraction ({self.fraction}) * attention.head_dim ({d}) = {d * self.fraction} "
                             f"must be an even whole number of channels >= 2")
        if self.scaling is not None:
            self.scaling.check(ctx, rotary_dim=width)

    def build(self, ctx):
        d = _rotated_head_dim(ctx, self.kind)
        return position.Rotary(head_dim=d, rotary_dim=self.rotary_dim(d), theta=self.theta,
                               interleaved=self.interleaved,
                               scaling=self.scaling.build(ctx) if self.scaling is not None else None)


class AlibiSpec(PositionSpec):
    """ALiBi linear biases with BLOOM's slopes (any head count). ``max_bias`` sets the slopes
    (MPT's alibi_bias_max; BLOOM's are 8). ``scaled`` multiplies the bias by the attention's score
    scale, as Falcon adds it before scaling: ``(q·k + alibi) * scale``. ``bias_dtype`` bfloat16
    computes ``slope x position`` in bfloat16 (slopes, positions and products rounded to it), as
    Falcon does whatever the model's dtype."""

    kind: Literal["alibi"]
    max_bias: PositiveFloat = 8.0
    scaled: bool = False
    bias_dtype: Literal["float32", "bfloat16"] = "float32"

    def check(self, ctx):
        attn = ctx.layer_spec.attention
        if self.scaled and attn.score_scale is None:
            raise ValueError(f"position.scaled is true but attention.kind {attn.kind!r} has no score scale to "
                             f"multiply the bias by")

    def build(self, ctx):
        attn = ctx.layer_spec.attention
        return position.ALiBi(num_heads=attn.num_heads, max_bias=self.max_bias,
                              scale=attn.score_scale if self.scaled else 1.0,
                              bias_dtype=getattr(torch, self.bias_dtype))


class BucketBiasSpec(PositionSpec):
    """Learned bias per bucketed relative position (T5); with ``segments`` true, a bias per
    (query segment, key segment) pair across segments, as CPM-Ant."""

    kind: Literal["bucket_bias"]
    num_buckets: PositiveInt = 32
    max_distance: Length = 128
    bidirectional: bool = True
    segments: bool = False

    def check(self, ctx):
        exact = self.num_buckets // (4 if self.bidirectional else 2)
        if exact < 1:
            raise ValueError(f"position.num_buckets ({self.num_buckets}) is too small: needs at least "
                             f"{4 if self.bidirectional else 2} buckets")
        if self.max_distance <= exact:
            raise ValueError(f"position.max_distance ({self.max_distance}) must exceed the {exact} exact buckets")
        if self.segments and not ctx.spec.embedding.num_segments:
            raise ValueError(f"position.segments is true but embedding.kind {ctx.spec.embedding.kind!r} gives no "
                             f"segment ids: the segment-pair buckets need an embedding with segments")

    def build(self, ctx):
        return position.BucketBias(num_heads=ctx.layer_spec.attention.num_heads, num_buckets=self.num_buckets,
                                   max_distance=self.max_distance, bidirectional=self.bidirectional,
                                   num_segments=ctx.spec.embedding.num_segments if self.segments else 0)


# ---------------------------------------------------------------------------------------------
# norm


class NormSpec(Strict):
    """Base of norms. ``build(ctx, dim=...)`` normalises vectors over their last axis; ``dim`` is
    the shape of the learned weight: the channel count, or ``(num_heads, head_dim)`` for a weight
    per head (``attention.qk_norm`` with scope ``per_head``)."""

    kind: str
    eps: PositiveFloat = 1e-5

    @abstractmethod
    def build(self, ctx: BuildContext, *, dim: int | tuple[int, int]) -> nn.Module: ...

    @property
    def has_weights(self) -> bool:
        """Whether this norm learns a scale (``attention.qk_norm`` scope ``per_head`` needs one)."""
        return True


class LayerNormSpec(NormSpec):
    """LayerNorm with learned scale and (by default) shift (BLOOM); ``affine: false`` learns
    neither (OLMo), and ``bias`` then defaults to false."""

    kind: Literal["layernorm"]
    bias: bool = True
    affine: bool = True

    @model_validator(mode="before")
    @classmethod
    def _bias_follows_affine(cls, data):
        if isinstance(data, dict) and data.get("affine") is False and "bias" not in data:
            data = {**data, "bias": False}
        return data

    @model_validator(mode="after")
    def _affine(self):
        if self.bias and not self.affine:
            raise ValueError("norm.bias is true but norm.affine is false: a norm without learned parameters has "
                             "no shift")
        return self

    @property
    def has_weights(self):
        return self.affine

    def build(self, ctx, *, dim):
        if not self.affine:
            return norm.ParameterFreeLayerNorm(eps=self.eps)
        if isinstance(dim, int):
            return norm.LayerNorm(dim=dim, eps=self.eps, bias=self.bias)
        return norm.HeadLayerNorm(dim=dim, eps=self.eps, bias=self.bias)


class RMSNormSpec(NormSpec):
    """RMSNorm (GLM-4, Seed-OSS, CPM-Ant). ``unit_offset`` scales by ``1 + weight`` with the weight
    initialised to zeros, as Gemma's GemmaRMSNorm (weights stored as Gemma stores them);
    ``affine: false`` learns no scale."""

    kind: Literal["rmsnorm"]
    eps: PositiveFloat = 1e-6
    unit_offset: bool = False
    affine: bool = True

    @model_validator(mode="after")
    def _affine(self):
        if self.unit_offset and not self.affine:
            raise ValueError("norm.unit_offset is true but norm.affine is false: unit_offset offsets the learned "
                             "scale, and a norm without learned parameters has none")
        return self

    @property
    def has_weights(self):
        return self.affine

    def build(self, ctx, *, dim):
        if not self.affine:
            return norm.ParameterFreeRMSNorm(eps=self.eps)
        if self.unit_offset:
            return norm.OffsetRMSNorm(dim=dim, eps=self.eps)
        return norm.RMSNorm(dim=dim, eps=self.eps)


# ---------------------------------------------------------------------------------------------
# attention


class AttentionSpec(Strict):
    """Base of attention kinds. ``build(ctx)`` returns a module with the forward of
    ``blocks.attention.Attention``."""

    kind: str
    num_heads: PositiveInt

    @abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module: ...

    @abstractmethod
    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of KV cache one token costs in one layer."""

    @property
    def position_head_dim(self) -> int | None:
        """The per-head width a rotary position scheme rotates (None: this kind has none)."""
        return getattr(self, "head_dim", None)

    def flops_per_token(self, module, *, keys):
        """The projections (the linear layers) plus each head's scores against ``keys`` keys and
        its mix of their values, 2 * head_dim FLOPs per key for each: 4 * num_heads * head_dim *
        keys. Every key slot the mask covers is counted (the kernels compute masked scores too).
        A kind whose query-key and value widths differ, or that has no ``head_dim``, overrides this."""
        head_dim = getattr(self, "head_dim", None)
        if head_dim is None:
            raise TypeError(f"attention kind {self.kind!r} has no head_dim to count its score FLOPs with: give "
                            f"{type(self).__name__} a flops_per_token(module, *, keys) method")
        return linear_flops(module) + 4 * self.num_heads * head_dim * keys

    @property
    def score_scale(self) -> float | None:
        """The factor on the query-key scores (None: this kind has no single one); a scaled
        position bias (``position.scaled``) is multiplied by it too."""
        return None

    def resolved(self, hidden_size: int) -> AttentionSpec:
        """This spec with defaults that depend on the model filled in."""
        return self


class QKNormSpec(Strict):
    """Normalise queries and keys after their projection, before the rotary embedding (and before
    ``clip_qkv``, as OLMoE). ``scope``: ``head`` normalises each head over its head_dim channels
    with one weight [Dh] shared by all heads (Qwen3, Gemma 3, Phi, Persimmon); ``per_head`` the
    same with each head its own weight [H, Dh] (Cohere's use_qk_norm, StableLM's qk_layernorm);
    ``projection`` the whole projection output, of width H*Dh for queries and Hkv*Dh for keys
    (OLMo 2). ``norm``: a norm section for these norms (StableLM's has no bias where its layer norms
    do); left out, the layer's own ``norm``."""

    scope: Literal["head", "per_head", "projection"] = "head"
    norm: SerializeAsAny[NormSpec] | None = None

    @field_validator("norm", mode="before")
    @classmethod
    def _registered_norm_kind(cls, value):
        if value is None or isinstance(value, NormSpec):
            return value
        from archcomposer.registry import get_registry  # the norm kinds plugins registered

        try:
            return _section_adapter(get_registry().spec_class(), "norm").validate_python(value)
        except ValidationError as exc:  # reported at attention.qk_norm.norm, naming the field within
            err = exc.errors(include_url=False)[0]
            tag = err["type"].startswith("union_tag")
            kind = value.get("kind") if isinstance(value, dict) else None
            loc = ".".join([str(p) for p in err["loc"] if p != kind] + (["kind"] if tag else []))
            got = "" if tag or err["type"] in ("missing", "value_error") else f" (got {err['input']!r})"
            raise ValueError(f"{loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}{got}") from None

    def norm_spec(self, ctx: BuildContext) -> NormSpec:
        return self.norm if self.norm is not None else ctx.layer_spec.norm


class GQASpec(AttentionSpec):
    """Grouped-query attention; MHA when num_kv_heads == num_heads, MQA when it is 1.

    ``scale`` multiplies the query-key scores (default head_dim**-0.5; Gemma 2's
    query_pre_attn_scalar**-0.5, Granite's attention_multiplier, MPT's softmax_scale).
    ``softcap`` caps the scaled scores at ``tanh(s / softcap) * softcap`` before the mask and any
    position bias are added (Gemma 2). ``clip_qkv`` clamps the projected queries, keys and values
    to [-clip_qkv, clip_qkv] (OLMo, MPT). ``qk_norm`` normalises queries and keys (see QKNormSpec)."""

    kind: Literal["gqa"]
    num_kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    fused_qkv: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: Each token sees itself and the ``sliding_window - 1`` tokens before it, counted in cache
    #: slots (padding included), as transformers' ``sliding_window`` (Mistral; Gemma 2's local
    #: layers through ``layers``). None: every token before it.
    sliding_window: Length | None = None
    scale: PositiveFloat | None = None
    softcap: PositiveFloat | None = None
    clip_qkv: PositiveFloat | None = None
    qk_norm: QKNormSpec | None = None

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return self

    def resolved(self, hidden_size: int) -> GQASpec:
        """num_kv_heads defaults to num_heads, head_dim to hidden_size // num_heads."""
        head_dim = self.head_dim
        if head_dim is None:
            if hidden_size % self.num_heads:
                raise ValueError(f"attention.head_dim is not set and hidden_size ({hidden_size}) is not divisible "
                                 f"by attention.num_heads ({self.num_heads}); set attention.head_dim")
            head_dim = hidden_size // self.num_heads
        return self.model_copy(update={"num_kv_heads": self.num_kv_heads or self.num_heads, "head_dim": head_dim})

    @property
    def score_scale(self) -> float:
        return self.scale if self.scale is not None else self.head_dim**-0.5

    def check(self, ctx):
        if self.qk_norm is not None and self.qk_norm.scope == "per_head":
            norm_spec = self.qk_norm.norm_spec(ctx)
            if not norm_spec.has_weights:
                where = "attention.qk_norm.norm" if self.qk_norm.norm is not None else "norm"
                raise ValueError(f"attention.qk_norm.scope 'per_head' gives each head its own norm weights, but "
                                 f"{where} (kind {norm_spec.kind!r}, affine false) learns none; use scope 'head'")

    def _qk_norms(self, ctx) -> tuple[nn.Module | None, nn.Module | None]:
        """The query and key norms, each applying a norm to every head (or to the whole projection)."""
        if self.qk_norm is None:
            return None, None
        norm_spec, scope, Dh = self.qk_norm.norm_spec(ctx), self.qk_norm.scope, self.head_dim

        def qk_norm(heads: int) -> nn.Module:
            width = heads * Dh if scope == "projection" else Dh  # the vector normalised
            weight = (heads, Dh) if scope == "per_head" else width
            return norm.HeadNorm(norm=norm_spec.build(ctx, dim=weight), head_dim=width)

        return qk_norm(self.num_heads), qk_norm(self.num_kv_heads)

    def build(self, ctx):
        D, H, Hkv, Dh = ctx.spec.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        sizes = [H * Dh, Hkv * Dh, Hkv * Dh]
        if self.fused_qkv:
            qkv = projection.FusedProjection(proj=_linear(D, sum(sizes), self.qkv_bias), sizes=sizes)
        else:
            qkv = projection.SplitProjection(**{n: _linear(D, s, self.qkv_bias) for n, s in zip("qkv", sizes)})
        q_norm, k_norm = self._qk_norms(ctx)
        return attention.Attention(num_heads=H, num_kv_heads=Hkv, head_dim=Dh, qkv=qkv,
                                   out=_linear(H * Dh, D, self.out_bias), dropout=self.dropout, layer_idx=ctx.layer,
                                   scale=self.score_scale, softcap=self.softcap, clip_qkv=self.clip_qkv,
                                   q_norm=q_norm, k_norm=k_norm, sliding_window=self.sliding_window)

    def kv_bytes_per_token(self, dtype_bytes):
        return 2 * self.num_kv_heads * self.head_dim * dtype_bytes


def deepseek_yarn_mscale(scaling: RopeScalingSpec | None) -> float:
    """DeepSeek's YaRN ``mscale``, which multiplies the score scale twice: ``0.1 * mscale_all_dim *
    ln(factor) + 1`` for a ``yarn`` scaling with ``mscale_all_dim`` and ``factor`` > 1, else 1
    (transformers' ``yarn_apply_mscale`` in modeling_deepseek_v3)."""
    if not isinstance(scaling, YarnScalingSpec) or not scaling.mscale_all_dim or scaling.factor <= 1:
        return 1.0
    return 0.1 * scaling.mscale_all_dim * math.log(scaling.factor) + 1.0


class MLASpec(AttentionSpec):
    """Multi-head latent attention (DeepSeek-V2, DeepSeek-V3). Each head's query and key are
    ``qk_nope_head_dim`` unrotated channels followed by ``qk_rope_head_dim`` rotated ones (the
    position scheme rotates those: its head_dim is ``qk_rope_head_dim``); values have ``v_head_dim``.
    Keys and values are expanded from a ``kv_lora_rank`` latent normalised by an RMSNorm (eps
    ``latent_norm_eps``); the rotated key part is one per token, shared by the heads. The cache holds
    the latent and that key: ``kv_lora_rank + qk_rope_head_dim`` values per token and layer.

    ``q_lora_rank``: queries through a normalised bottleneck of this width (DeepSeek-V2/V3); None: one
    linear projection (DeepSeek-V2-Lite). ``bias``: biases on the bottleneck projections and the
    output (transformers' ``attention_bias``). ``scale``: the factor on the scores; left out,
    ``(qk_nope_head_dim + qk_rope_head_dim)**-0.5``, multiplied twice by DeepSeek's YaRN mscale when
    the layer's position has a ``yarn`` scaling with ``mscale_all_dim`` (see ``deepseek_yarn_mscale``)."""

    kind: Literal["mla"]
    q_lora_rank: PositiveInt | None = None
    kv_lora_rank: PositiveInt
    qk_nope_head_dim: PositiveInt
    qk_rope_head_dim: PositiveInt
    v_head_dim: PositiveInt
    bias: bool = False
    latent_norm_eps: PositiveFloat = 1e-6
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    scale: PositiveFloat | None = None

    @property
    def position_head_dim(self) -> int:
        return self.qk_rope_head_dim

    @property
    def score_scale(self) -> float:
        """The scale before any YaRN correction (which comes with a rotary position, never with a
        scaled position bias)."""
        return self.scale if self.scale is not None else (self.qk_nope_head_dim + self.qk_rope_head_dim) ** -0.5

    def layer_scale(self, ctx: BuildContext) -> float:
        """The factor on the scores in this layer, the YaRN correction included."""
        if self.scale is not None:
            return self.scale
        mscale = deepseek_yarn_mscale(getattr(ctx.layer_spec.position, "scaling", None))
        return self.score_scale * mscale * mscale  # in transformers' order, to the bit

    def build(self, ctx):
        D, H, R = ctx.spec.hidden_size, self.num_heads, self.kv_lora_rank
        Dn, Dr, Dv = self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        if self.q_lora_rank is None:
            q = _linear(D, H * (Dn + Dr), False)
        else:
            q = attention.LowRank(down=_linear(D, self.q_lora_rank, self.bias),
                                  norm=norm.RMSNorm(dim=self.q_lora_rank, eps=self.latent_norm_eps),
                                  up=_linear(self.q_lora_rank, H * (Dn + Dr), False))
        return attention.LatentAttention(
            num_heads=H, qk_nope_head_dim=Dn, qk_rope_head_dim=Dr, v_head_dim=Dv, kv_lora_rank=R, q=q,
            kv_down=_linear(D, R + Dr, self.bias), kv_norm=norm.RMSNorm(dim=R, eps=self.latent_norm_eps),
            kv_up=_linear(R, H * (Dn + Dv), False), out=_linear(H * Dv, D, self.bias), scale=self.layer_scale(ctx),
            dropout=self.dropout, layer_idx=ctx.layer)

    def kv_bytes_per_token(self, dtype_bytes):
        return (self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes

    def flops_per_token(self, module, *, keys):
        """The projections, then each head's scores against ``keys`` keys (2 * (Dn + Dr) FLOPs per
        key) and its mix of their values (2 * Dv per key). Each key is expanded from its latent once
        per forward (``kv_up`` among the projections): a forward over the whole sequence."""
        width = self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim
        return linear_flops(module) + 2 * self.num_heads * width * keys


# ---------------------------------------------------------------------------------------------
# mlp

Activation = Literal["silu", "gelu", "gelu_tanh", "relu"]


class MLPSpec(Strict):
    """Base of feed-forward kinds: ``build(ctx)`` returns a module [B, S, D] -> [B, S, D]."""

    kind: str
    intermediate_size: PositiveInt

    @abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module: ...


class GatedMLPSpec(MLPSpec):
    """down(act(gate(x)) * up(x)): SwiGLU with silu, GeGLU with gelu."""

    kind: Literal["gated"]
    activation: Activation = "silu"
    fused: bool = False
    bias: bool = False

    def build(self, ctx):
        D, I = ctx.spec.hidden_size, self.intermediate_size
        if self.fused:
            gate_up = projection.FusedProjection(proj=_linear(D, 2 * I, self.bias), sizes=[I, I])
        else:
            gate_up = projection.SplitProjection(gate=_linear(D, I, self.bias), up=_linear(D, I, self.bias))
        return mlp.GatedMLP(activation=self.activation, gate_up=gate_up, down=_linear(I, D, self.bias))


class PlainMLPSpec(MLPSpec):
    """down(act(up(x))), with biases (BLOOM)."""

    kind: Literal["plain"]
    activation: Activation = "gelu_tanh"
    bias: bool = True

    def build(self, ctx):
        D, I = ctx.spec.hidden_size, self.intermediate_size
        return mlp.PlainMLP(activation=self.activation, up=_linear(D, I, self.bias), down=_linear(I, D, self.bias))


class SoftmaxRouterSpec(Strict):
    """Softmax over the experts, the top_k kept; ``normalize`` rescales the kept probabilities to
    sum to 1 (Mixtral; Qwen-MoE and OLMoE's ``norm_topk_prob``)."""

    kind: Literal["softmax"]
    normalize: bool = True


class GroupedSigmoidRouterSpec(Strict):
    """DeepSeek-V3's router: sigmoid scores plus a load-balancing score bias choose the experts,
    among the ``top_groups`` best of ``num_groups`` groups (``n_group``, ``topk_group``); the
    chosen scores, renormalised with ``normalize`` (``norm_topk_prob``), times ``scale``
    (``routed_scaling_factor``) weight them."""

    kind: Literal["grouped_sigmoid"]
    normalize: bool = True
    num_groups: PositiveInt = 1
    top_groups: PositiveInt = 1
    scale: PositiveFloat = 1.0


RouterSpec = Annotated[SoftmaxRouterSpec | GroupedSigmoidRouterSpec, Field(discriminator="kind")]


class SharedExpertSpec(Strict):
    """A gated MLP every token goes through beside the routed experts (DeepSeek's
    ``n_shared_experts`` x ``moe_intermediate_size`` wide); ``gated`` scales its output by
    sigmoid(a learned D -> 1 projection) (Qwen2-MoE's ``shared_expert_gate``)."""

    intermediate_size: PositiveInt
    gated: bool = False


class MoESpec(MLPSpec):
    """Mixture of experts: ``num_experts`` gated MLPs of width ``intermediate_size``, ``top_k`` of
    them per token as the ``router`` picks, plus an optional ``shared_expert``. ``aux_loss_coef``
    weighs the load-balancing loss added to the causal LM loss when router logits are requested
    (``router_aux_loss_coef``); None: the model has no such loss (DeepSeek's transformers models
    return the router logits alone)."""

    kind: Literal["moe"]
    num_experts: PositiveInt
    top_k: PositiveInt
    activation: Activation = "silu"
    router: RouterSpec = SoftmaxRouterSpec(kind="softmax")
    shared_expert: SharedExpertSpec | None = None
    aux_loss_coef: Annotated[float, Field(ge=0.0)] | None = 0.0

    @model_validator(mode="after")
    def _routable(self):
        if self.top_k > self.num_experts:
            raise ValueError(f"mlp.top_k ({self.top_k}) must be at most mlp.num_experts ({self.num_experts})")
        r = self.router
        if r.kind == "grouped_sigmoid":
            if self.num_experts % r.num_groups or self.num_experts // r.num_groups < 2:
                raise ValueError(f"mlp.num_experts ({self.num_experts}) must split into router.num_groups "
                                 f"({r.num_groups}) groups of at least 2 experts (a group is scored by its best two)")
            if r.top_groups > r.num_groups:
                raise ValueError(f"mlp.router.top_groups ({r.top_groups}) must be at most router.num_groups "
                                 f"({r.num_groups})")
            if self.top_k > r.top_groups * (self.num_experts // r.num_groups):
                raise ValueError(f"mlp.top_k ({self.top_k}) must be at most the experts of router.top_groups "
                                 f"({r.top_groups}) groups of {self.num_experts // r.num_groups}")
        return self

    def active_parameters(self, module):
        """All but the experts a token does not go to: the router, ``top_k`` experts, the shared expert."""
        idle = (self.num_experts - self.top_k) * _expert_parameters(module.experts)
        return sum(p.numel() for p in module.parameters()) - idle

    def flops_per_token(self, module, *, keys):
        """The router and shared expert (linear layers) plus ``top_k`` experts' three products."""
        return linear_flops(module) + 2 * self.top_k * _expert_parameters(module.experts)

    def build(self, ctx):
        D, I, E = ctx.spec.hidden_size, self.intermediate_size, self.num_experts
        r = self.router
        if r.kind == "softmax":
            router = mlp.SoftmaxRouter(gate=_linear(D, E, False), top_k=self.top_k, normalize=r.normalize)
        else:
            router = mlp.GroupedSigmoidRouter(gate=_linear(D, E, False), top_k=self.top_k, normalize=r.normalize,
                                              num_groups=r.num_groups, top_groups=r.top_groups, scale=r.scale)
        experts = mlp.Experts(num_experts=E, dim=D, intermediate_size=I, activation=self.activation)
        shared = shared_gate = None
        if self.shared_expert is not None:
            S = self.shared_expert.intermediate_size
            gate_up = projection.SplitProjection(gate=_linear(D, S, False), up=_linear(D, S, False))
            shared = mlp.GatedMLP(activation=self.activation, gate_up=gate_up, down=_linear(S, D, False))
            shared_gate = _linear(D, 1, False) if self.shared_expert.gated else None
        return mlp.MoE(router=router, experts=experts, shared=shared, shared_gate=shared_gate)


def _expert_parameters(experts: mlp.Experts) -> int:
    """Weights of one routed expert (its gate, up and down projections)."""
    return experts.gate_up_proj[0].numel() + experts.down_proj[0].numel()


# ---------------------------------------------------------------------------------------------
# wiring: how a layer connects its norms, attention and MLP


class WiringSpec(Strict):
    """Base of layer wirings. ``build(ctx)`` builds the layer's blocks (``ctx.layer_spec``) and
    returns a module ``(x, **attention_kwargs) -> (x, attention weights)``."""

    kind: str
    #: Dropout on each branch output before it is added (Seed-OSS residual_dropout, BLOOM hidden_dropout).
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: Multiplies each branch output before it is added (Granite's residual_multiplier).
    residual_scale: PositiveFloat = 1.0

    @abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module: ...

    @staticmethod
    def _blocks(ctx: BuildContext) -> tuple[LayerSpec, int]:
        return ctx.layer_spec, ctx.spec.hidden_size


class PreNormSpec(WiringSpec):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))`` (Llama, GLM-4, most decoders). With
    ``residual_from_norm``, the residual is the normed input (BLOOM's
    ``apply_residual_connection_post_layernorm``)."""

    kind: Literal["pre_norm"]
    residual_from_norm: bool = False

    def build(self, ctx):
        L, D = self._blocks(ctx)
        return layer.SequentialLayer(attn_norm=L.norm.build(ctx, dim=D), attention=L.attention.build(ctx),
                                     mlp_norm=L.norm.build(ctx, dim=D), mlp=L.mlp.build(ctx),
                                     residual_from_norm=self.residual_from_norm, dropout=self.dropout,
                                     residual_scale=self.residual_scale)


class SandwichSpec(WiringSpec):
    """A norm before and after each branch: ``x + norm(attn(norm(x)))`` (Gemma 2 and 3)."""

    kind: Literal["sandwich"]

    def build(self, ctx):
        L, D = self._blocks(ctx)
        return layer.SequentialLayer(attn_norm=L.norm.build(ctx, dim=D), attention=L.attention.build(ctx),
                                     attn_post_norm=L.norm.build(ctx, dim=D), mlp_norm=L.norm.build(ctx, dim=D),
                                     mlp=L.mlp.build(ctx), mlp_post_norm=L.norm.build(ctx, dim=D),
                                     dropout=self.dropout, residual_scale=self.residual_scale)


class PostBranchNormSpec(WiringSpec):
    """A norm on each branch output only: ``x + norm(attn(x))`` (OLMo 2)."""

    kind: Literal["post_branch_norm"]

    def build(self, ctx):
        L, D = self._blocks(ctx)
        return layer.SequentialLayer(attention=L.attention.build(ctx), attn_post_norm=L.norm.build(ctx, dim=D),
                                     mlp=L.mlp.build(ctx), mlp_post_norm=L.norm.build(ctx, dim=D),
                                     dropout=self.dropout, residual_scale=self.residual_scale)


class ParallelSpec(WiringSpec):
    """Attention and MLP side by side: ``x + attn(norm1(x)) + mlp(norm2(x))``. With
    ``shared_norm``, one norm feeds both (GPT-J, Phi, Falcon 7B, Cohere); otherwise two (GPT-NeoX,
    Falcon's new decoder architecture)."""

    kind: Literal["parallel"]
    shared_norm: bool = True

    def build(self, ctx):
        L, D = self._blocks(ctx)
        return layer.ParallelLayer(attn_norm=L.norm.build(ctx, dim=D), attention=L.attention.build(ctx),
                                   mlp_norm=None if self.shared_norm else L.norm.build(ctx, dim=D),
                                   mlp=L.mlp.build(ctx), dropout=self.dropout, residual_scale=self.residual_scale)


class PostNormSpec(WiringSpec):
    """The original transformer's order: ``norm(x + attn(x))`` then ``norm(x + mlp(x))`` (OPT-350m,
    usually with ``final_norm: false``)."""

    kind: Literal["post_norm"]

    def build(self, ctx):
        L, D = self._blocks(ctx)
        return layer.PostNormLayer(attention=L.attention.build(ctx), attn_norm=L.norm.build(ctx, dim=D),
                                   mlp=L.mlp.build(ctx), mlp_norm=L.norm.build(ctx, dim=D), dropout=self.dropout,
                                   residual_scale=self.residual_scale)


# ---------------------------------------------------------------------------------------------
# embedding: input ids (or embeddings) -> the first hidden states


class EmbeddingSpec(Strict):
    """Base of input kinds. ``build(ctx)`` returns a module with the interface of
    ``blocks.embedding.TokenEmbedding``: it may prepend tokens to the first forward, give segment
    ids, and mark prefix-LM context, and the model handles each of these generically."""

    kind: str
    #: The LM head reuses the token embedding matrix.
    tied: bool = False

    @abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module: ...

    @property
    def num_segments(self) -> int:
        """Segment types this kind gives its tokens (0: no segment ids)."""
        return 0


class LearnedPositionsSpec(Strict):
    """Learned absolute position embeddings added to the tokens (GPT-2, OPT, StarCoder): a table of
    ``max_positions + offset`` rows, looked up at ``position + offset`` (OPT's offset is 2)."""

    offset: NonNegativeInt = 0


class TokenEmbeddingSpec(EmbeddingSpec):
    """Token embedding, optionally scaled (Gemma by sqrt(hidden_size), Granite's
    ``embedding_multiplier``), plus learned absolute positions, then optionally normed with the
    spec's norm kind (BLOOM's ``word_embeddings_layernorm``), then dropped out in training
    (GPT-NeoX's ``hidden_dropout``, StarCoder 2's ``embedding_dropout``, Phi's ``embd_pdrop``)."""

    kind: Literal["tokens"]
    scale: PositiveFloat | Literal["sqrt_hidden_size"] = 1.0
    norm: bool = False
    learned_positions: LearnedPositionsSpec | None = None
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: Whether ``scale`` applies to embeddings passed as ``inputs_embeds`` too (Granite) or only to
    #: rows of the table (Gemma, which scales inside its embedding module).
    scale_inputs_embeds: bool = True

    def build(self, ctx):
        spec = ctx.spec
        D = spec.hidden_size
        positions = None
        if self.learned_positions is not None:
            positions = _embedding(spec.max_positions + self.learned_positions.offset, D)
        return embedding.TokenEmbedding(
            tokens=_embedding(spec.vocab_size, D), scale=D**0.5 if self.scale == "sqrt_hidden_size" else self.scale,
            positions=positions, position_offset=self.learned_positions.offset if self.learned_positions else 0,
            norm=spec.norm.build(ctx, dim=D) if self.norm else None, dropout=self.dropout,
            scale_inputs_embeds=self.scale_inputs_embeds)


class SegmentsSpec(Strict):
    """Segment embedding: prompt and pad tokens are segment 0, input tokens ``token_segment``."""

    num_types: PositiveInt
    token_segment: NonNegativeInt = 2

    @model_validator(mode="after")
    def _segment_in_range(self):
        if self.token_segment >= self.num_types:
            raise ValueError(f"token_segment ({self.token_segment}) must be < num_types ({self.num_types})")
        return self


class PromptSpec(Strict):
    """``num_types * length`` extra embedding rows after the vocabulary; the ``length`` rows of
    type ``type`` are prepended to every input."""

    num_types: PositiveInt
    length: PositiveInt
    type: NonNegativeInt = 2

    @model_validator(mode="after")
    def _type_in_range(self):
        if self.type >= self.num_types:
            raise ValueError(f"prompt.type ({self.type}) must be < prompt.num_types ({self.num_types})")
        return self


class PromptSegmentsSpec(EmbeddingSpec):
    """CPM-Ant's input: learned prompt tokens prepended to the first forward, a segment embedding
    added to every token, and a prefix-LM mask: the tokens of the first forward are context that
    attends both ways, later tokens attend causally (``prefix_mask`` narrows the context). The
    prompt positions are dropped from what the model returns."""

    kind: Literal["prompt_segments"]
    prompt: PromptSpec
    segments: SegmentsSpec

    @model_validator(mode="after")
    def _untied(self):
        if self.tied:
            raise ValueError("embedding.tied cannot be true with embedding.kind 'prompt_segments': the LM head has "
                             "vocab_size rows but the embedding also holds the prompt rows")
        return self

    @property
    def prompt_rows(self) -> int:
        """Rows of the token embedding after the vocabulary: every prompt type's tokens."""
        return self.prompt.num_types * self.prompt.length

    @property
    def num_segments(self) -> int:
        return self.segments.num_types

    def build(self, ctx):
        V, D, p = ctx.spec.vocab_size, ctx.spec.hidden_size, self.prompt
        return embedding.PromptSegmentsEmbedding(
            tokens=_embedding(V + self.prompt_rows, D), segments=_embedding(self.segments.num_types, D),
            prompt_start=V + p.type * p.length, prompt_length=p.length, token_segment=self.segments.token_segment)


# ---------------------------------------------------------------------------------------------
# heads


class HeadSpec(Strict):
    """Base of task heads. A head describes itself, so the test kit and the checkpoint code treat
    a plugin's head like a built-in one: its output class, whether that output carries the cache,
    example labels for it, the shapes of its outputs, and its transformers config fields."""

    kind: str
    #: The ModelOutput subclass this head's model returns.
    output_class: ClassVar[type[outputs.ModelOutput]]
    #: Whether the output carries past_key_values.
    returns_cache: ClassVar[bool] = True
    #: Whether ``logits_to_keep`` selects the positions it scores (its ``logits`` are per position).
    keeps_positions: ClassVar[bool] = False
    #: Whether its transformers head has a bias (checked on export).
    hf_bias: ClassVar[bool] = False

    @abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module: ...

    def tied_to_embedding(self, spec: ModelSpecBase) -> bool:
        """Whether this head's weight is the token embedding matrix (not stored separately)."""
        return False

    def example_labels(self, spec: ModelSpecBase, ids: torch.Tensor, generator: torch.Generator) -> dict:
        """Keyword arguments with valid labels for a batch of ``ids`` [B, S] (none: no loss)."""
        return {}

    def output_shapes(self, spec: ModelSpecBase, batch: int, seq: int) -> dict[str, tuple[int, ...]]:
        """The shape of each tensor field of this head's output for a [batch, seq] input."""
        return {}

    def max_batch(self, spec: ModelSpecBase) -> int | None:
        """The largest batch this head can score (None: any)."""
        return None

    def check_labels(self, spec: ModelSpecBase, labels: dict[str, torch.Tensor], *, batch: int,
                     seq: int) -> dict[str, torch.Tensor]:
        """The label arguments given to ``forward`` (``labels``, ``start_positions``...; only those
        not None), checked for a [batch, seq] input and returned as this head's module takes them;
        an ``InputError`` naming the argument otherwise. Class ids are checked to be in range (a
        host sync, on calls with labels only). The default leaves them to the head's module."""
        return labels

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """This head's spec fields from a transformers ``config.json``, read as its task head reads it."""
        return {}

    def hf_config(self) -> dict[str, Any]:
        """The transformers ``config.json`` fields this head sets."""
        return {}


class CausalLMHeadSpec(HeadSpec):
    """Next-token logits over the vocabulary (tied to the embedding when embedding.tied)."""

    kind: Literal["causal_lm"]
    bias: bool = False
    #: False scores position t against label t (CPM-Ant) rather than label t+1.
    shift_labels: bool = True
    #: Multiplies the logits (Cohere's logit_scale; Granite's is 1 / logits_scaling).
    logit_scale: PositiveFloat = 1.0
    #: Caps the scaled logits at tanh(logits / softcap) * softcap (Gemma 2's final_logit_softcapping).
    softcap: PositiveFloat | None = None
    output_class: ClassVar = outputs.CausalLMOutputWithPast
    keeps_positions: ClassVar = True

    def build(self, ctx):
        proj = _linear(ctx.spec.hidden_size, ctx.spec.vocab_size, self.bias)
        if self.tied_to_embedding(ctx.spec):
            proj.weight = ctx.embedding.tokens.weight
        return heads.CausalLMHead(proj=proj, shift_labels=self.shift_labels, logit_scale=self.logit_scale,
                                  softcap=self.softcap)

    def tied_to_embedding(self, spec):
        return spec.embedding.tied

    def example_labels(self, spec, ids, generator):
        return {"labels": ids.clone()}

    def check_labels(self, spec, labels, *, batch, seq):
        _only(self.kind, labels, "labels")
        return {"labels": _class_ids("labels", labels["labels"], (batch, seq), spec.vocab_size, "vocab_size")}

    def output_shapes(self, spec, batch, seq):
        return {"logits": (batch, seq, spec.vocab_size)}


def _only(kind: str, labels: dict[str, torch.Tensor], *names: str) -> None:
    """Refuse label arguments other than ``names``."""
    others = [name for name in labels if name not in names]
    if others:
        verb = "do" if len(others) > 1 else "does"
        raise InputError(f"{' and '.join(others)} {verb} not apply to head {kind!r}, which takes {' and '.join(names)}")


def _class_ids(name: str, value, shape: tuple[int, ...], num_classes: int, bound: str) -> torch.Tensor:
    """Class-id labels of ``shape``, each in [0, num_classes) or the ignore index, as int64
    (cross-entropy's targets)."""
    inputs.index_tensor(name, value, f"class ids {shape}")
    if tuple(value.shape) != shape:
        raise InputError(f"{name} has shape {tuple(value.shape)}; expected {shape}")
    inputs.in_range(name, value, num_classes, bound, ignore=heads.IGNORE_INDEX)
    return value.long()


def _hf_num_labels(config: dict[str, Any]) -> int:
    return len(config["id2label"]) if config.get("id2label") else config.get("num_labels", 2)


def _hf_labels(num_labels: int) -> dict[str, Any]:
    return {"id2label": {str(i): f"LABEL_{i}" for i in range(num_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(num_labels)}}


class SequenceClassificationHeadSpec(HeadSpec):
    """One score vector per sequence, read at its last non-pad token (needs pad_token_id)."""

    kind: Literal["sequence_classification"]
    num_labels: PositiveInt = 2
    problem_type: Literal["regression", "single_label_classification", "multi_label_classification"] | None = None
    bias: bool = False
    output_class: ClassVar = outputs.SequenceClassifierOutputWithPast

    def build(self, ctx):
        return heads.SequenceClassificationHead(proj=_linear(ctx.spec.hidden_size, self.num_labels, self.bias),
                                                pad_token_id=ctx.spec.pad_token_id, problem_type=self.problem_type)

    def max_batch(self, spec):
        return 1 if spec.pad_token_id is None else None  # the last token of each row is found by the pad id

    def example_labels(self, spec, ids, generator):
        B, n = ids.shape[0], self.num_labels
        if self.problem_type == "multi_label_classification":
            return {"labels": torch.randint(0, 2, (B, n), generator=generator).float()}
        if self.problem_type == "regression" or n == 1:
            labels = torch.randn(B, n, generator=generator)
            return {"labels": labels.squeeze(-1) if n == 1 else labels}
        return {"labels": torch.randint(0, n, (B,), generator=generator)}

    def check_labels(self, spec, labels, *, batch, seq):
        _only(self.kind, labels, "labels")
        value, n = inputs.tensor("labels", labels["labels"], "one label per row"), self.num_labels
        # The problem the head's loss infers when problem_type is not set (as transformers does).
        problem = self.problem_type or ("regression" if n == 1 else "single_label_classification"
                                        if value.dtype in inputs.INDEX_DTYPES else "multi_label_classification")
        if problem == "single_label_classification":
            return {"labels": _class_ids("labels", value, (batch,), n, "num_labels")}
        shape = (batch,) if problem == "regression" and n == 1 else (batch, n)
        if not value.is_floating_point():
            raise InputError(f"labels for {problem} (num_labels={n}) must be floats, got {value.dtype}")
        if tuple(value.shape) != shape:
            raise InputError(f"labels for {problem} (num_labels={n}) has shape {tuple(value.shape)}; expected {shape}")
        return {"labels": value}

    def output_shapes(self, spec, batch, seq):
        return {"logits": (batch, self.num_labels)}

    @classmethod
    def from_hf_config(cls, config):
        return {"num_labels": _hf_num_labels(config), "problem_type": config.get("problem_type")}

    def hf_config(self):
        return {**_hf_labels(self.num_labels), "problem_type": self.problem_type}


class TokenClassificationHeadSpec(HeadSpec):
    """One score vector per token, behind a dropout."""

    kind: Literal["token_classification"]
    num_labels: PositiveInt = 2
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    bias: bool = True
    output_class: ClassVar = outputs.TokenClassifierOutput
    returns_cache: ClassVar[bool] = False
    hf_bias: ClassVar[bool] = True

    def build(self, ctx):
        return heads.TokenClassificationHead(proj=_linear(ctx.spec.hidden_size, self.num_labels, self.bias),
                                             dropout=self.dropout)

    def example_labels(self, spec, ids, generator):
        return {"labels": torch.randint(0, self.num_labels, ids.shape, generator=generator)}

    def check_labels(self, spec, labels, *, batch, seq):
        _only(self.kind, labels, "labels")
        return {"labels": _class_ids("labels", labels["labels"], (batch, seq), self.num_labels, "num_labels")}

    def output_shapes(self, spec, batch, seq):
        return {"logits": (batch, seq, self.num_labels)}

    @classmethod
    def from_hf_config(cls, config):
        dropout = next((config[k] for k in ("classifier_dropout", "hidden_dropout") if config.get(k) is not None), 0.1)
        return {"num_labels": _hf_num_labels(config), "dropout": dropout}

    def hf_config(self):
        return {**_hf_labels(self.num_labels), "classifier_dropout": self.dropout}


class QuestionAnsweringHeadSpec(HeadSpec):
    """Extractive QA: span start and end logits."""

    kind: Literal["question_answering"]
    bias: bool = True
    output_class: ClassVar = outputs.QuestionAnsweringModelOutput
    returns_cache: ClassVar[bool] = False
    hf_bias: ClassVar[bool] = True

    def build(self, ctx):
        return heads.QuestionAnsweringHead(proj=_linear(ctx.spec.hidden_size, 2, self.bias))

    def example_labels(self, spec, ids, generator):
        B, S = ids.shape
        start = torch.randint(0, S, (B,), generator=generator)
        return {"start_positions": start, "end_positions": torch.minimum(start + 1, torch.tensor(S - 1))}

    def check_labels(self, spec, labels, *, batch, seq):
        _only(self.kind, labels, "start_positions", "end_positions")
        # One of the two alone gives no loss, and positions outside the sequence are ignored by the
        # loss: both as transformers, so neither is refused.
        for name, value in labels.items():
            inputs.index_tensor(name, value, f"a token position per row, [{batch}]")
            if tuple(value.shape) != (batch,):
                raise InputError(f"{name} has shape {tuple(value.shape)}; expected ({batch},), a position per row")
        return {name: value.long() for name, value in labels.items()}

    def output_shapes(self, spec, batch, seq):
        return {"start_logits": (batch, seq), "end_logits": (batch, seq)}


BUILTIN_KINDS: dict[str, list[type[Strict]]] = {
    "embedding": [TokenEmbeddingSpec, PromptSegmentsSpec],
    "position": [NoPositionSpec, RopeSpec, PartialRopeSpec, AlibiSpec, BucketBiasSpec],
    "norm": [LayerNormSpec, RMSNormSpec],
    "attention": [GQASpec, MLASpec],
    "mlp": [GatedMLPSpec, PlainMLPSpec, MoESpec],
    "wiring": [PreNormSpec, SandwichSpec, PostBranchNormSpec, ParallelSpec, PostNormSpec],
    "head": [CausalLMHeadSpec, SequenceClassificationHeadSpec, TokenClassificationHeadSpec,
             QuestionAnsweringHeadSpec],
}
SECTION_BASES: dict[str, type[Strict]] = {
    "embedding": EmbeddingSpec, "position": PositionSpec, "norm": NormSpec, "attention": AttentionSpec,
    "mlp": MLPSpec, "wiring": WiringSpec, "head": HeadSpec,
}
#: Sections a spec may leave out, and what they then are.
SECTION_DEFAULTS: dict[str, Strict] = {
    "embedding": TokenEmbeddingSpec(kind="tokens"), "wiring": PreNormSpec(kind="pre_norm"),
}


# ---------------------------------------------------------------------------------------------
# per-layer differences

SELECTORS = ("range", "every", "indices", "type")


class LayerOverride(Strict):
    """Different blocks or fields for some layers. One selector says which layers: ``range``
    ``[start, stop)``; ``every`` k layers from ``offset`` (default 0); ``indices``; or ``type``,
    the layers whose ``layer_types`` entry it names. Each section given (``position``,
    ``attention``, ``norm``, ``mlp``, ``wiring``) holds the fields that differ, merged over the
    spec's section; a section with another ``kind`` replaces it whole. Later entries win."""

    range: tuple[NonNegativeInt, NonNegativeInt] | None = None
    every: PositiveInt | None = None
    offset: NonNegativeInt | None = None
    indices: list[NonNegativeInt] | None = None
    type: str | None = None
    position: dict[str, Any] | None = None
    attention: dict[str, Any] | None = None
    norm: dict[str, Any] | None = None
    mlp: dict[str, Any] | None = None
    wiring: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selects_and_changes(self):
        chosen = [name for name in SELECTORS if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of {', '.join(SELECTORS)} to select layers; got {chosen or 'none'}")
        if self.offset is not None and self.every is None:
            raise ValueError("offset goes with every (layers every k from offset)")
        if self.range is not None and self.range[0] >= self.range[1]:
            raise ValueError(f"range {list(self.range)} is empty: it is [start, stop) with start < stop")
        if not any(getattr(self, name) is not None for name in LAYER_SECTIONS):
            raise ValueError(f"changes nothing: give at least one of {', '.join(LAYER_SECTIONS)}")
        return self

    def selects(self, index: int, layer_types: list[str] | None) -> bool:
        if self.range is not None:
            return self.range[0] <= index < self.range[1]
        if self.every is not None:
            offset = self.offset or 0
            return index >= offset and (index - offset) % self.every == 0
        if self.indices is not None:
            return index in self.indices
        return layer_types is not None and layer_types[index] == self.type


_section_adapters: dict[tuple[type, str], TypeAdapter] = {}


def _section_adapter(cls: type[BaseModel], name: str) -> TypeAdapter:
    """Validates a dict into the kinds the spec class accepts for section ``name``."""
    key = (cls, name)
    if key not in _section_adapters:
        info = cls.model_fields[name]  # pydantic keeps the discriminator beside the bare union
        union = Annotated[info.annotation, Field(discriminator=info.discriminator)] if info.discriminator \
            else info.annotation
        _section_adapters[key] = TypeAdapter(union)
    return _section_adapters[key]


# ---------------------------------------------------------------------------------------------
# the model


class ModelSpecBase(Strict):
    """The whole model. The section fields are typed by their base class here; the class that
    validates input (``archcomposer.registry.spec_class()``) narrows each to the discriminated
    union of the kinds registered at that time."""

    name: str
    family: str | None = None
    vocab_size: Length
    hidden_size: PositiveInt
    num_layers: LayerCount
    max_positions: Length
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    initializer_range: PositiveFloat = 0.02
    embedding: EmbeddingSpec = SECTION_DEFAULTS["embedding"]
    position: PositionSpec
    attention: AttentionSpec
    norm: NormSpec
    mlp: MLPSpec
    wiring: WiringSpec = SECTION_DEFAULTS["wiring"]
    #: Normalise the last layer's output (every decoder but post-norm ones such as OPT-350m).
    final_norm: bool = True
    #: A name per layer (transformers' ``layer_types``), for ``layers`` entries that select by type.
    layer_types: list[str] | None = None
    layers: list[LayerOverride] = []
    heads: list[HeadSpec] = []

    _layer_specs: tuple[LayerSpec, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _cross_field_rules(self):
        given = {name: getattr(self, name).model_dump(exclude_unset=True) for name in LAYER_SECTIONS}
        object.__setattr__(self, "attention", self.attention.resolved(self.hidden_size))
        self._layer_specs = self._resolve_layers(given)
        ctx = BuildContext(self)
        self.embedding.check(ctx)
        base = self._layer_specs[0] if all(getattr(self._layer_specs[0], n) is getattr(self, n)
                                           for n in LAYER_SECTIONS) else None
        for spec in {id(s): s for s in self._layer_specs}.values():  # each distinct layer once
            try:
                for name in LAYER_SECTIONS:
                    getattr(spec, name).check(ctx.at(spec.index))
            except ValueError as exc:
                if spec is base:
                    raise
                raise ValueError(f"layer {spec.index} (as the layers entries make it): {exc}") from None
        kinds = [h.kind for h in self.heads]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"heads lists a kind more than once: {kinds}")
        for head in self.heads:
            head.check(ctx)
        ids = [(("pad_token_id",), self.pad_token_id), (("bos_token_id",), self.bos_token_id)]
        eos = self.eos_token_id
        ids += [(("eos_token_id",), eos)] if not isinstance(eos, list) else \
            [(("eos_token_id", i), value) for i, value in enumerate(eos)]
        for loc, value in ids:
            if value is not None and not 0 <= value < self.vocab_size:
                raise SpecRuleError(loc, f"token id {value} is not in the vocabulary: ids are 0 to vocab_size - 1 "
                                         f"= {self.vocab_size - 1}")
        return self

    def _resolve_layers(self, given: dict[str, dict]) -> tuple[LayerSpec, ...]:
        """Each layer's blocks: the spec's sections with the ``layers`` entries that select it
        merged over them. Layers changed by the same entries share one LayerSpec."""
        n = self.num_layers
        if self.layer_types is not None and len(self.layer_types) != n:
            raise SpecRuleError(("layer_types",), f"layer_types has {len(self.layer_types)} entries; expected one "
                                                  f"per layer, num_layers = {n}")
        for k, entry in enumerate(self.layers):
            if entry.range is not None and entry.range[1] > n:
                raise SpecRuleError(("layers", k, "range"), f"range {list(entry.range)} reaches past the last "
                                                            f"layer (num_layers = {n})")
            if entry.indices is not None and any(i >= n for i in entry.indices):
                raise SpecRuleError(("layers", k, "indices"), f"indices {entry.indices} name a layer past the "
                                                              f"last (num_layers = {n}; layers count from 0)")
            if entry.every is not None and (entry.offset or 0) >= n:
                raise SpecRuleError(("layers", k, "offset"), f"offset {entry.offset} selects no layer "
                                                             f"(num_layers = {n})")
            if entry.type is not None and entry.type not in (self.layer_types or []):
                raise SpecRuleError(("layers", k, "type"), f"type {entry.type!r} is not among layer_types "
                                                           f"{sorted(set(self.layer_types or [])) or '(not set)'}")
        base = {name: getattr(self, name) for name in LAYER_SECTIONS}
        shared: dict[tuple[int, ...], LayerSpec] = {}  # layers changed by the same entries share one
        specs = []
        for i in range(n):
            applied = tuple(k for k, entry in enumerate(self.layers) if entry.selects(i, self.layer_types))
            if applied not in shared:
                shared[applied] = LayerSpec(index=i, **(self._merged(given, applied, i) if applied else base))
            specs.append(shared[applied])
        return tuple(specs)

    def _merged(self, given: dict[str, dict], applied: tuple[int, ...], index: int) -> dict[str, Strict]:
        sections = {}
        for name in LAYER_SECTIONS:
            data, last = dict(given[name]), None
            for k in applied:
                change = getattr(self.layers[k], name)
                if change is not None:
                    data = dict(change) if change.get("kind", data["kind"]) != data["kind"] else {**data, **change}
                    last = k
            if last is None:
                sections[name] = getattr(self, name)
                continue
            try:
                value = _section_adapter(type(self), name).validate_python(data)
            except Exception as exc:  # a pydantic ValidationError: report its first error at the entry
                errors = getattr(exc, "errors", lambda: [])()
                err = errors[0] if errors else {"loc": (), "msg": str(exc)}
                loc = tuple(p for p in err["loc"] if p != data.get("kind") and not str(p).startswith("function-"))
                loc += ("kind",) if err.get("type", "").startswith("union_tag") else ()
                raise SpecRuleError(("layers", last, name, *loc),
                                    f"{err['msg'].removeprefix('Value error, ')} (layer {index})") from None
            sections[name] = value.resolved(self.hidden_size) if name == "attention" else value
        return sections

    @property
    def layer_specs(self) -> tuple[LayerSpec, ...]:
        """Each layer's blocks after the ``layers`` overrides."""
        return self._layer_specs

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """An ``nn.Embedding`` left uninitialised: models are built on the meta device, where
    ``normal_`` runs a Python decomposition that imports torch._dynamo (seconds on the first
    build), and ``build_model`` initialises every weight afterwards anyway."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))
