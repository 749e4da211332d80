"""Layer wirings: pre-norm (and BLOOM's residual from the normed input), sandwich, OLMo 2's norm
on the branch output, parallel with one or two norms, post-norm; residual dropout only while
training; residual_scale on each branch. Stand-in submodules make each term visible; Granite's
decoder layer checks residual and attention scales with real blocks."""

import torch
from torch import nn
from transformers import GraniteConfig
from transformers.models.granite.modeling_granite import GraniteDecoderLayer

from archcomposer.blocks.attention import Attention
from archcomposer.blocks.layer import ParallelLayer, PostNormLayer, SequentialLayer
from archcomposer.blocks.mlp import GatedMLP
from archcomposer.blocks.norm import RMSNorm
from archcomposer.blocks.position import Rotary
from archcomposer.blocks.projection import SplitProjection


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


def test_residual_scale_multiplies_each_branch_output_before_it_is_added():
    x = torch.randn(2, 3, 4)
    s = 0.25
    sequential = SequentialLayer(attn_norm=Scale(2.0), attention=FakeAttention(), attn_post_norm=Scale(7.0),
                                 mlp_norm=Scale(3.0), mlp=Scale(5.0), residual_scale=s)
    h = x + s * 7 * attn(2 * x)
    torch.testing.assert_close(sequential(x)[0], h + s * 5 * (3 * h), rtol=0, atol=1e-5)
    parallel = ParallelLayer(attn_norm=Scale(2.0), attention=FakeAttention(), mlp=Scale(5.0), residual_scale=s)
    torch.testing.assert_close(parallel(x)[0], x + s * attn(2 * x) + s * 5 * (2 * x), rtol=0, atol=1e-5)
    post = PostNormLayer(attention=FakeAttention(), attn_norm=Scale(2.0), mlp=Scale(5.0), mlp_norm=Scale(3.0),
                         residual_scale=s)
    h = 2 * (x + s * attn(x))
    torch.testing.assert_close(post(x)[0], 3 * (h + s * 5 * h), rtol=0, atol=1e-5)


@torch.no_grad()
def test_pre_norm_with_residual_and_attention_scales_equals_granite_decoder_layer():
    torch.manual_seed(0)
    config = GraniteConfig(hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
                           attention_multiplier=0.4, residual_multiplier=0.3)
    config._attn_implementation = "eager"
    theirs = GraniteDecoderLayer(config, layer_idx=0).eval()
    for p in theirs.parameters():
        p.add_(torch.randn_like(p) * 0.2)
    a, m = theirs.self_attn, theirs.mlp

    def norm(source):
        ours = RMSNorm(dim=16, eps=config.rms_norm_eps)
        ours.weight.copy_(source.weight)
        return ours

    ours = SequentialLayer(
        attn_norm=norm(theirs.input_layernorm), mlp_norm=norm(theirs.post_attention_layernorm),
        attention=Attention(num_heads=4, num_kv_heads=2, head_dim=4, qkv=SplitProjection(q=a.q_proj, k=a.k_proj,
                                                                                         v=a.v_proj),
                            out=a.o_proj, scale=config.attention_multiplier),
        mlp=GatedMLP(activation="silu", gate_up=SplitProjection(gate=m.gate_proj, up=m.up_proj), down=m.down_proj),
        residual_scale=config.residual_multiplier)
    x = torch.randn(2, 6, 16)
    pos = torch.arange(6)[None].expand(2, 6)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, 4, 2).float() / 4)
    emb = torch.cat([pos[..., None].float() * inv_freq] * 2, dim=-1)  # [B, S, Dh]
    bias = torch.zeros(2, 1, 6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), torch.finfo().min)
    expected = theirs(x, attention_mask=bias, position_embeddings=(emb.cos(), emb.sin()))
    expected = expected[0] if isinstance(expected, tuple) else expected
    rotate = Rotary(head_dim=4, rotary_dim=4, theta=10000.0, interleaved=False)(pos, pos).rotate
    torch.testing.assert_close(ours(x, rotate=rotate, scores_bias=bias)[0], expected, rtol=1e-5, atol=1e-5)
