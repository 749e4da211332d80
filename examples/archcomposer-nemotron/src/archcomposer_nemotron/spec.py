"""The plugin's block kinds: pydantic models that validate a spec's section and build its module.
Registering them (see ``plugin.py``) puts them in every spec's schema. ``build(ctx, ...)``
receives archcomposer's ``BuildContext``: the whole spec (``ctx.spec``), the layer being built
(``ctx.layer``) and that layer's blocks (``ctx.layer_spec``)."""

from typing import Literal

from pydantic import PositiveFloat
from torch import nn

from archcomposer.spec import MLPSpec, NormSpec

from archcomposer_nemotron import blocks


class LayerNorm1PSpec(NormSpec):
    """LayerNorm with a ``1 + w`` scale (Nemotron)."""

    kind: Literal["layernorm1p"]
    eps: PositiveFloat = 1e-5
    bias: bool = True

    def build(self, ctx, *, dim):
        return blocks.LayerNorm1P(dim=dim, eps=self.eps, bias=self.bias)


class SquaredReLUMLPSpec(MLPSpec):
    """down(relu(up(x))^2), transformers' ``hidden_act: relu2`` (Nemotron)."""

    kind: Literal["squared_relu"]
    bias: bool = False

    def build(self, ctx):
        D, I = ctx.spec.hidden_size, self.intermediate_size
        return blocks.SquaredReLUMLP(up=nn.Linear(D, I, bias=self.bias), down=nn.Linear(I, D, bias=self.bias))
