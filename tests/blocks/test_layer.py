"""The layer's wiring: pre-norm residuals, BLOOM's residual taken from the normed input, and
residual dropout only while training. Stand-in submodules make each term visible."""

import torch
from torch import nn

from archcomposer.blocks.layer import TransformerLayer


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class FakeAttention(nn.Module):
    def forward(self, x, **kwargs):
        return x * 10 + 1, kwargs.get("tag")


def layer(from_norm, dropout=0.0):
    return TransformerLayer(attn_norm=Scale(2.0), attention=FakeAttention(), mlp_norm=Scale(3.0), mlp=Scale(5.0),
                            residual_from_norm=from_norm, residual_dropout=dropout)


def test_pre_norm_residuals():
    x = torch.randn(2, 3, 4)
    y, weights = layer(False)(x, tag="w")
    h = x + (2 * x * 10 + 1)  # x + attn(norm(x))
    torch.testing.assert_close(y, h + 5 * (3 * h), rtol=0, atol=1e-6)  # h + mlp(norm(h))
    assert weights == "w"


def test_residual_from_norm():
    x = torch.randn(2, 3, 4)
    y, _ = layer(True)(x)
    h = 2 * x + (2 * x * 10 + 1)  # norm(x) + attn(norm(x))
    torch.testing.assert_close(y, 3 * h + 5 * (3 * h), rtol=0, atol=1e-5)


def test_residual_dropout_only_while_training():
    x = torch.ones(1, 64, 64)
    block = layer(False, dropout=0.5)
    torch.testing.assert_close(block.eval()(x)[0], layer(False)(x)[0], rtol=0, atol=0)
    assert not torch.equal(block.train()(x)[0], layer(False)(x)[0])
