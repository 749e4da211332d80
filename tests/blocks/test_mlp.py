"""Feed-forward blocks against the references: GLM-4's fused SwiGLU, CPM-Ant's GeGLU and BLOOM's
plain GELU MLP; activations against transformers' ACT2FN."""

import pytest
import torch
from transformers import BloomConfig, CpmAntConfig, GlmConfig
from transformers.activations import ACT2FN
from transformers.models.bloom.modeling_bloom import BloomMLP
from transformers.models.cpmant.modeling_cpmant import CpmAntDenseGatedACT
from transformers.models.glm.modeling_glm import GlmMLP

from archcomposer.blocks.mlp import ACTIVATIONS, GatedMLP, PlainMLP
from archcomposer.blocks.projection import FusedProjection, SplitProjection

D, I = 16, 24


def x():
    return torch.randn(2, 5, D, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("ours", "theirs"), [("silu", "silu"), ("gelu", "gelu"), ("gelu_tanh", "gelu_pytorch_tanh"),
                                              ("relu", "relu")])
def test_activations_equal_transformers(ours, theirs):
    t = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(ACTIVATIONS[ours](t), ACT2FN[theirs](t), rtol=0, atol=0)


@torch.no_grad()
def test_fused_gated_mlp_equals_glm():
    reference = GlmMLP(GlmConfig(hidden_size=D, intermediate_size=I, hidden_act="silu"))
    ours = GatedMLP(activation="silu", down=torch.nn.Linear(I, D, bias=False),
                    gate_up=FusedProjection(proj=torch.nn.Linear(D, 2 * I, bias=False), sizes=[I, I]))
    ours.gate_up.proj.weight.copy_(reference.gate_up_proj.weight)
    ours.down.weight.copy_(reference.down_proj.weight)
    torch.testing.assert_close(ours(x()), reference(x()), rtol=0, atol=0)


@torch.no_grad()
def test_split_gated_mlp_equals_cpm_ant():
    reference = CpmAntDenseGatedACT(CpmAntConfig(hidden_size=D, dim_ff=I))
    down = torch.nn.Linear(I, D, bias=False)
    gate_up = SplitProjection(gate=torch.nn.Linear(D, I, bias=False), up=torch.nn.Linear(D, I, bias=False))
    ours = GatedMLP(activation="gelu", down=down, gate_up=gate_up)
    ours.gate_up.gate.weight.copy_(reference.w_0.weight)
    ours.gate_up.up.weight.copy_(reference.w_1.weight)
    torch.testing.assert_close(ours(x()), down(reference(x())), rtol=0, atol=0)


@torch.no_grad()
def test_plain_mlp_equals_bloom():
    reference = BloomMLP(BloomConfig(hidden_size=D, n_head=2, hidden_dropout=0.0)).eval()
    ours = PlainMLP(activation="gelu_tanh", up=torch.nn.Linear(D, 4 * D), down=torch.nn.Linear(4 * D, D))
    for mine, theirs in ((ours.up, reference.dense_h_to_4h), (ours.down, reference.dense_4h_to_h)):
        mine.weight.copy_(theirs.weight)
        mine.bias.copy_(torch.randn(theirs.bias.shape))
        theirs.bias.copy_(mine.bias)
    # BLOOM's GELU is its own tanh approximation with rounded constants
    torch.testing.assert_close(ours(x()), reference(x(), torch.zeros(2, 5, D)), rtol=1e-5, atol=1e-6)
