"""The plugin's block kinds: pydantic models that validate a spec's section and build its module.
Registering them (see ``plugin.py``) puts them in every spec's schema. ``build(ctx)`` and
``check(ctx)`` receive a ``BuildContext``: the whole spec (``ctx.spec``), the layer being built
(``ctx.layer``) and that layer's blocks (``ctx.layer_spec``, after the spec's ``layers``
overrides)."""

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from archcomposer.spec import BuildContext, GQASpec, PositionSpec

from archcomposer_llama import blocks


class Llama3RopeSpec(PositionSpec):
    """Rotary embedding with Llama 3.1's frequency scaling for long contexts (Llama 3.1-3.3;
    Hugging Face ``rope_parameters.rope_type: llama3``)."""

    kind: Literal["llama3_rope"]
    theta: PositiveFloat = 500000.0
    factor: PositiveFloat = 8.0
    low_freq_factor: PositiveFloat = 1.0
    high_freq_factor: PositiveFloat = 4.0
    original_max_positions: PositiveInt = 8192

    @model_validator(mode="after")
    def _factors_ordered(self):
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"position.high_freq_factor ({self.high_freq_factor}) must exceed "
                             f"position.low_freq_factor ({self.low_freq_factor})")
        return self

    @staticmethod
    def _head_dim(ctx: BuildContext) -> int:
        """The width it rotates: the head_dim of the layer's attention (``ctx.layer_spec``)."""
        attention = ctx.layer_spec.attention
        if attention.position_head_dim is None:
            raise ValueError(f"position.kind 'llama3_rope' rotates the channels of each attention head, but "
                             f"attention.kind {attention.kind!r} has no head_dim for it to rotate")
        return attention.position_head_dim

    def check(self, ctx):
        head_dim = self._head_dim(ctx)
        if head_dim % 2:
            raise ValueError(f"position.kind 'llama3_rope' needs an even attention.head_dim, got {head_dim}")

    def build(self, ctx):
        return blocks.Llama3Rotary(head_dim=self._head_dim(ctx), theta=self.theta, factor=self.factor,
                                   low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor,
                                   original_max_positions=self.original_max_positions)


class SlidingWindowSpec(GQASpec):
    """Grouped-query attention over the last ``window`` tokens only (Mistral 7B). The same
    parameters as ``gqa``, so a ``gqa`` checkpoint loads into it."""

    kind: Literal["sliding_window"]
    window: PositiveInt = Field(4096, description="tokens each token sees, itself included")

    def build(self, ctx):
        gqa = super().build(ctx)  # builds the projections
        return blocks.SlidingWindowAttention(window=self.window, num_heads=gqa.num_heads,
                                             num_kv_heads=gqa.num_kv_heads, head_dim=gqa.head_dim, qkv=gqa.qkv,
                                             out=gqa.out, dropout=gqa.dropout, layer_idx=ctx.layer)
