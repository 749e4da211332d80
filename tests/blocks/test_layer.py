"""Layer wirings: pre-norm (and BLOOM's residual from the normed input), sandwich, OLMo 2's norm
on the branch output, parallel with one or two norms, post-norm; residual dropout only while
training. Stand-in submodules make each term visible."""

import torch
from torch import nn

from archcomposer.blocks.layer import ParallelLayer, PostNormLayer, SequentialLayer


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class FakeAttention(nn.Module):
    def forward(self, x, **kwargs):
        return x * 10 + 1, kwargs.get("tag")


def attn(x):
    return x * 10 + 1


def pre_norm(from_norm=False, dropout=0.0):
    return SequentialLayer(attn_norm=Scale(2.0), attention=FakeAttention(), mlp_norm=Scale(3.0), mlp=Scale(5.0),
                           residual_from_norm=from_norm, dropout=dropout)


def test_pre_norm_residuals():
    x = torch.randn(2, 3, 4)
    y, weights = pre_norm()(x, tag="w")
    h = x + attn(2 * x)  # x + attn(norm(x))
    torch.testing.assert_close(y, h + 5 * (3 * h), rtol=0, atol=1e-5)  # h + mlp(norm(h))
    assert weights == "w"


def test_residual_from_norm():
    x = torch.randn(2, 3, 4)
    y, _ = pre_norm(from_norm=True)(x)
    h = 2 * x + attn(2 * x)  # norm(x) + attn(norm(x))
    torch.testing.assert_close(y, 3 * h + 5 * (3 * h), rtol=0, atol=1e-5)


def test_sandwich_norms_before_and_after_each_branch():
    x = torch.randn(2, 3, 4)
    layer = SequentialLayer(attn_norm=Scale(2.0), attention=FakeAttention(), attn_post_norm=Scale(7.0),
                            mlp_norm=Scale(3.0), mlp=Scale(5.0), mlp_post_norm=Scale(11.0))
    h = x + 7 * attn(2 * x)
    torch.testing.assert_close(layer(x)[0], h + 11 * (5 * (3 * h)), rtol=0, atol=1e-4)


def test_post_branch_norm_normalises_only_the_branch_output():
    x = torch.randn(2, 3, 4)
    layer = SequentialLayer(attention=FakeAttention(), attn_post_norm=Scale(7.0), mlp=Scale(5.0),
                            mlp_post_norm=Scale(11.0))
    h = x + 7 * attn(x)
    torch.testing.assert_close(layer(x)[0], h + 11 * (5 * h), rtol=0, atol=1e-4)


def test_parallel_with_one_shared_norm_and_with_two():
    x = torch.randn(2, 3, 4)
    shared = ParallelLayer(attn_norm=Scale(2.0), attention=FakeAttention(), mlp=Scale(5.0))
    torch.testing.assert_close(shared(x)[0], x + attn(2 * x) + 5 * (2 * x), rtol=0, atol=1e-5)
    two = ParallelLayer(attn_norm=Scale(2.0), attention=FakeAttention(), mlp=Scale(5.0), mlp_norm=Scale(3.0))
    torch.testing.assert_close(two(x)[0], x + attn(2 * x) + 5 * (3 * x), rtol=0, atol=1e-5)


def test_post_norm_normalises_after_each_residual_add():
    x = torch.randn(2, 3, 4)
    layer = PostNormLayer(attention=FakeAttention(), attn_norm=Scale(2.0), mlp=Scale(5.0), mlp_norm=Scale(3.0))
    h = 2 * (x + attn(x))
    torch.testing.assert_close(layer(x)[0], 3 * (h + 5 * h), rtol=0, atol=1e-4)


def test_residual_dropout_only_while_training():
    x = torch.ones(1, 64, 64)
    for make in (lambda d: pre_norm(dropout=d),
                 lambda d: ParallelLayer(attn_norm=Scale(2.0), attention=FakeAttention(), mlp=Scale(5.0), dropout=d),
                 lambda d: PostNormLayer(attention=FakeAttention(), attn_norm=Scale(2.0), mlp=Scale(5.0),
                                         mlp_norm=Scale(3.0), dropout=d)):
        block = make(0.5)
        torch.testing.assert_close(block.eval()(x)[0], make(0.0)(x)[0], rtol=0, atol=0)
        assert not torch.equal(block.train()(x)[0], make(0.0)(x)[0])
