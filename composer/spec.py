"""The spec schema: pydantic v2 models, one per block kind, grouped into discriminated unions by
``kind``. Every model forbids unknown fields and is frozen.

Each block-kind model also knows how to build its block (``build``): this module, with
``archcomposer.model``, is the only place that reads a spec and constructs modules. Plugins add kinds
by subclassing a section base (``PositionSpec``, ``NormSpec``, ...) with a ``kind: Literal[...]``
and registering the class (see ``archcomposer.registry``)."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from torch import nn

from archcomposer import outputs
from archcomposer.blocks import attention, heads, mlp, norm, position, projection


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _linear(fan_in: int, fan_out: int, bias: bool) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, bias=bias)


# ---------------------------------------------------------------------------------------------
# position


class PositionSpec(Strict):
    """Base of position schemes. ``build`` returns a module whose forward is
    ``(query_pos, key_pos, query_seg, key_seg) -> blocks.position.PositionEncoding``."""

    kind: str

    @abstractmethod
    def build(self, spec: ModelSpecBase) -> nn.Module: ...

    def check(self, spec: ModelSpecBase) -> None:
        """Cross-field rules that need the whole model spec."""


class NoPositionSpec(PositionSpec):
    """No position signal."""

    kind: Literal["none"]

    def build(self, spec):
        return position.NoPosition()


class RopeSpec(PositionSpec):
    """Rotary embedding over the whole head, rotating the two halves (Llama, Seed-OSS)."""

    kind: Literal["rope"]
    theta: PositiveFloat = 10000.0

    def check(self, spec):
        if spec.attention.head_dim % 2:
            raise ValueError(f"position.kind 'rope' needs an even attention.head_dim, got {spec.attention.head_dim}")

    def build(self, spec):
        d = spec.attention.head_dim
        return position.Rotary(head_dim=d, rotary_dim=d, theta=self.theta, interleaved=False)


class PartialRopeSpec(PositionSpec):
    """Rotary embedding over a fraction of each head (GLM-4 rotates half, in adjacent pairs)."""

    kind: Literal["partial_rope"]
    theta: PositiveFloat = 10000.0
    fraction: float = Field(0.5, gt=0.0, le=1.0)
    interleaved: bool = True

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.fraction)

    def check(self, spec):
        d = spec.attention.head_dim
        width = self.rotary_dim(d)
        if width < 2 or width % 2 or width != d * self.fraction:
            raise ValueError(f"position.fraction ({self.fraction}) * attention.head_dim ({d}) = {d * self.fraction} "
                             f"must be an even whole number of channels >= 2")

    def build(self, spec):
        d = spec.attention.head_dim
        return position.Rotary(head_dim=d, rotary_dim=self.rotary_dim(d), theta=self.theta,
                               interleaved=self.interleaved)


class AlibiSpec(PositionSpec):
    """ALiBi linear biases with BLOOM's slopes (any head count)."""

    kind: Literal["alibi"]

    def build(self, spec):
        return position.ALiBi(num_heads=spec.attention.num_heads)


class BucketBiasSpec(PositionSpec):
    """Learned bias per bucketed relative position (T5); with ``segments`` true, a bias per
    (query segment, key segment) pair across segments, as CPM-Ant."""

    kind: Literal["bucket_bias"]
    num_buckets: PositiveInt = 32
    max_distance: PositiveInt = 128
    bidirectional: bool = True
    segments: bool = False

    def check(self, spec):
        exact = self.num_buckets // (4 if self.bidirectional else 2)
        if exact < 1:
            raise ValueError(f"position.num_buckets ({self.num_buckets}) is too small: needs at least "
                             f"{4 if self.bidirectional else 2} buckets")
        if self.max_distance <= exact:
            raise ValueError(f"position.max_distance ({self.max_distance}) must exceed the {exact} exact buckets")
        if self.segments and spec.embedding.segments is None:
            raise ValueError("position.segments is true but embedding.segments is not set: "
                             "the segment-pair buckets need embedding.segments.num_types")

    def build(self, spec):
        segments = spec.embedding.segments.num_types if self.segments else 0
        return position.BucketBias(num_heads=spec.attention.num_heads, num_buckets=self.num_buckets,
                                   max_distance=self.max_distance, bidirectional=self.bidirectional,
                                   num_segments=segments)


# ---------------------------------------------------------------------------------------------
# norm


class NormSpec(Strict):
    kind: str
    eps: PositiveFloat = 1e-5

    @abstractmethod
    def build(self, dim: int) -> nn.Module: ...


class LayerNormSpec(NormSpec):
    """LayerNorm with learned scale and (by default) shift (BLOOM)."""

    kind: Literal["layernorm"]
    bias: bool = True

    def build(self, dim):
        return norm.LayerNorm(dim=dim, eps=self.eps, bias=self.bias)


class RMSNormSpec(NormSpec):
    """RMSNorm (GLM-4, Seed-OSS, CPM-Ant)."""

    kind: Literal["rmsnorm"]
    eps: PositiveFloat = 1e-6

    def build(self, dim):
        return norm.RMSNorm(dim=dim, eps=self.eps)


# ---------------------------------------------------------------------------------------------
# attention


class AttentionSpec(Strict):
    kind: str
    num_heads: PositiveInt
    #: "causal": every token attends to itself and earlier tokens. "prefix_lm": the tokens of the
    #: first forward (the context) attend to each other both ways; later tokens attend causally.
    mask: Literal["causal", "prefix_lm"] = "causal"

    @abstractmethod
    def build(self, spec: ModelSpecBase, layer_idx: int) -> nn.Module: ...

    @abstractmethod
    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of KV cache one token costs in one layer."""

    def resolved(self, hidden_size: int) -> AttentionSpec:
        """This spec with defaults that depend on the model filled in."""
        return self

    def check(self, spec: ModelSpecBase) -> None:
        """Cross-field rules that need the whole model spec."""


class GQASpec(AttentionSpec):
    """Grouped-query attention; MHA when num_kv_heads == num_heads, MQA when it is 1."""

    kind: Literal["gqa"]
    num_kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    fused_qkv: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

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

    def build(self, spec, layer_idx):
        D, H, Hkv, Dh = spec.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        sizes = [H * Dh, Hkv * Dh, Hkv * Dh]
        if self.fused_qkv:
            qkv = projection.FusedProjection(proj=_linear(D, sum(sizes), self.qkv_bias), sizes=sizes)
        else:
            qkv = projection.SplitProjection(**{n: _linear(D, s, self.qkv_bias) for n, s in zip("qkv", sizes)})
        return attention.Attention(num_heads=H, num_kv_heads=Hkv, head_dim=Dh, qkv=qkv,
                                   out=_linear(H * Dh, D, self.out_bias), dropout=self.dropout, layer_idx=layer_idx)

    def kv_bytes_per_token(self, dtype_bytes):
        return 2 * self.num_kv_heads * self.head_dim * dtype_bytes


# ---------------------------------------------------------------------------------------------
# mlp

Activation = Literal["silu", "gelu", "gelu_tanh", "relu"]


class MLPSpec(Strict):
    kind: str
    intermediate_size: PositiveInt

    @abstractmethod
    def build(self, spec: ModelSpecBase) -> nn.Module: ...


class GatedMLPSpec(MLPSpec):
    """down(act(gate(x)) * up(x)): SwiGLU with silu, GeGLU with gelu."""

    kind: Literal["gated"]
    activation: Activation = "silu"
    fused: bool = False
    bias: bool = False

    def build(self, spec):
        D, I = spec.hidden_size, self.intermediate_size
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

    def build(self, spec):
        D, I = spec.hidden_size, self.intermediate_size
        return mlp.PlainMLP(activation=self.activation, up=_linear(D, I, self.bias), down=_linear(I, D, self.bias))


# ---------------------------------------------------------------------------------------------
# embedding (one kind: its options are flags)


class SegmentsSpec(Strict):
    """CPM-Ant's segment embedding: prompt and pad tokens are segment 0, input tokens
    ``token_segment``."""

    num_types: PositiveInt
    token_segment: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _segment_in_range(self):
        if self.token_segment >= self.num_types:
            raise ValueError(f"token_segment ({self.token_segment}) must be < num_types ({self.num_types})")
        return self


class PromptSpec(Strict):
    """CPM-Ant's prompt tokens: ``num_types * length`` extra embedding rows after the vocabulary;
    the ``length`` rows of type ``type`` are prepended to every input."""

    num_types: PositiveInt
    length: PositiveInt
    type: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _type_in_range(self):
        if self.type >= self.num_types:
            raise ValueError(f"prompt.type ({self.type}) must be < prompt.num_types ({self.num_types})")
        return self


class EmbeddingSpec(Strict):
    tied: bool = False
    #: Normalise the embeddings (with the spec's norm kind) before the first layer (BLOOM).
    norm: bool = False
    segments: SegmentsSpec | None = None
    prompt: PromptSpec | None = None


class ResidualSpec(Strict):
    #: Take each residual from the normed input (BLOOM's apply_residual_connection_post_layernorm).
    from_norm: bool = False
    #: Dropout on each branch output before it is added (Seed-OSS residual_dropout, BLOOM hidden_dropout).
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


# ---------------------------------------------------------------------------------------------
# heads


class HeadSpec(Strict):
    kind: str
    #: The ModelOutput subclass this head's model returns.
    output_class: ClassVar[type[outputs.ModelOutput]]
    #: Whether the output carries past_key_values.
    returns_cache: ClassVar[bool] = True

    @abstractmethod
    def build(self, spec: ModelSpecBase, embedding: nn.Module) -> nn.Module: ...


class CausalLMHeadSpec(HeadSpec):
    """Next-token logits over the vocabulary (tied to the embedding when embedding.tied)."""

    kind: Literal["causal_lm"]
    bias: bool = False
    #: False scores position t against label t (CPM-Ant) rather than label t+1.
    shift_labels: bool = True
    output_class: ClassVar = outputs.CausalLMOutputWithPast

    def build(self, spec, embedding):
        proj = _linear(spec.hidden_size, spec.vocab_size, self.bias)
        if spec.embedding.tied:
            proj.weight = embedding.tokens.weight
        return heads.CausalLMHead(proj=proj, shift_labels=self.shift_labels)


class SequenceClassificationHeadSpec(HeadSpec):
    """One score vector per sequence, read at its last non-pad token (needs pad_token_id)."""

    kind: Literal["sequence_classification"]
    num_labels: PositiveInt = 2
    problem_type: Literal["regression", "single_label_classification", "multi_label_classification"] | None = None
    bias: bool = False
    output_class: ClassVar = outputs.SequenceClassifierOutputWithPast

    def build(self, spec, embedding):
        return heads.SequenceClassificationHead(proj=_linear(spec.hidden_size, self.num_labels, self.bias),
                                                pad_token_id=spec.pad_token_id, problem_type=self.problem_type)


class TokenClassificationHeadSpec(HeadSpec):
    """One score vector per token, behind a dropout."""

    kind: Literal["token_classification"]
    num_labels: PositiveInt = 2
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    bias: bool = True
    output_class: ClassVar = outputs.TokenClassifierOutput
    returns_cache: ClassVar[bool] = False

    def build(self, spec, embedding):
        return heads.TokenClassificationHead(proj=_linear(spec.hidden_size, self.num_labels, self.bias),
                                             dropout=self.dropout)


class QuestionAnsweringHeadSpec(HeadSpec):
    """Extractive QA: span start and end logits."""

    kind: Literal["question_answering"]
    bias: bool = True
    output_class: ClassVar = outputs.QuestionAnsweringModelOutput
    returns_cache: ClassVar[bool] = False

    def build(self, spec, embedding):
        return heads.QuestionAnsweringHead(proj=_linear(spec.hidden_size, 2, self.bias))


BUILTIN_KINDS: dict[str, list[type[Strict]]] = {
    "position": [NoPositionSpec, RopeSpec, PartialRopeSpec, AlibiSpec, BucketBiasSpec],
    "norm": [LayerNormSpec, RMSNormSpec],
    "attention": [GQASpec],
    "mlp": [GatedMLPSpec, PlainMLPSpec],
    "head": [CausalLMHeadSpec, SequenceClassificationHeadSpec, TokenClassificationHeadSpec,
             QuestionAnsweringHeadSpec],
}
SECTION_BASES: dict[str, type[Strict]] = {
    "position": PositionSpec, "norm": NormSpec, "attention": AttentionSpec, "mlp": MLPSpec, "head": HeadSpec,
}


# ---------------------------------------------------------------------------------------------
# the model


class ModelSpecBase(Strict):
    """The whole model. The section fields are typed by their base class here; the class that
    validates input (``archcomposer.registry.spec_class()``) narrows each to the discriminated union
    of the kinds registered at that time."""

    name: str
    family: str | None = None
    vocab_size: PositiveInt
    hidden_size: PositiveInt
    num_layers: PositiveInt
    max_positions: PositiveInt
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    initializer_range: PositiveFloat = 0.02
    embedding: EmbeddingSpec = EmbeddingSpec()
    position: PositionSpec
    attention: AttentionSpec
    norm: NormSpec
    mlp: MLPSpec
    residual: ResidualSpec = ResidualSpec()
    heads: list[HeadSpec] = []

    @model_validator(mode="after")
    def _cross_field_rules(self):
        object.__setattr__(self, "attention", self.attention.resolved(self.hidden_size))
        self.position.check(self)
        self.attention.check(self)
        if self.embedding.tied and self.embedding.prompt is not None:
            raise ValueError("embedding.tied cannot be true with embedding.prompt: the LM head has vocab_size rows "
                             "but the embedding also holds the prompt rows (CPM-Ant keeps a separate head)")
        kinds = [h.kind for h in self.heads]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"heads lists a kind more than once: {kinds}")
        for bound, value in (("pad_token_id", self.pad_token_id), ("bos_token_id", self.bos_token_id)):
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{bound} ({value}) must be in [0, vocab_size={self.vocab_size})")
        return self

    @property
    def num_embeddings(self) -> int:
        """Rows of the input embedding: the vocabulary plus any prompt rows."""
        prompt = self.embedding.prompt
        return self.vocab_size + (prompt.num_types * prompt.length if prompt else 0)

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_defaults=False)
