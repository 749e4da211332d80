"""Position schemes. Each answers one question for a batch of query and key positions:

    encode(query_pos [B, Q], key_pos [B, K], query_seg, key_seg) -> PositionEncoding(rotate, bias)

``rotate`` is applied to queries and keys ([B, H, S, D] -> same; the identity for bias-only
schemes) and ``bias`` ([B, H, Q, K] or None) is added to the attention scores. The model calls
the scheme once per forward and hands the result to every layer. Tables (inverse frequencies,
slopes, bucket biases) are built once, at construction."""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class PositionEncoding(NamedTuple):
    rotate: Callable[[torch.Tensor], torch.Tensor]
    bias: torch.Tensor | None


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class NoPosition(nn.Module):
    """No positional signal (the model relies on the causal mask alone)."""

    def forward(self, query_pos, key_pos, query_seg=None, key_seg=None) -> PositionEncoding:
        return PositionEncoding(_identity, None)


class Rotary(nn.Module):
    """Rotary embedding over the first ``rotary_dim`` channels of each head.

    ``interleaved=False`` rotates the two halves of that width (Llama, Seed-OSS);
    ``interleaved=True`` rotates adjacent pairs (GLM-4, which also rotates only part of the head)."""

    def __init__(self, *, head_dim: int, rotary_dim: int, theta: float, interleaved: bool):
        super().__init__()
        self.head_dim, self.rotary_dim, self.interleaved, self.theta = head_dim, rotary_dim, interleaved, theta

    def inv_freq(self, device) -> torch.Tensor:
        """The rotation frequencies [R/2]. Subclasses rescale them (Llama 3's long-context RoPE)."""
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float, device=device) / self.rotary_dim
        return 1.0 / (self.theta**exponents)

    def forward(self, query_pos, key_pos, query_seg=None, key_seg=None) -> PositionEncoding:
        # Frequencies are recomputed in fp32 (a few dozen values) so casting the model to bf16
        # cannot round them, as it would a buffer.
        freqs = query_pos[..., None].float() * self.inv_freq(query_pos.device)  # [B, S, R/2]
        if self.interleaved:
            freqs = freqs.repeat_interleave(2, dim=-1)  # [B, S, R] pairs (f0, f0, f1, f1, ...)
        else:
            freqs = torch.cat((freqs, freqs), dim=-1)  # [B, S, R] halves (f0, f1, ..., f0, f1, ...)
        cos, sin = freqs.cos()[:, None], freqs.sin()[:, None]  # [B, 1, S, R]
        rotate_pairs = _rotate_interleaved if self.interleaved else _rotate_half
        rotary_dim = self.rotary_dim

        def rotate(x: torch.Tensor) -> torch.Tensor:  # x: [B, H, S, D]
            x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
            c, s = cos.to(x.dtype), sin.to(x.dtype)
            return torch.cat((x_rot * c + rotate_pairs(x_rot) * s, x_pass), dim=-1)

        return PositionEncoding(rotate, None)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, interleaved={self.interleaved}"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def alibi_slopes(num_heads: int, max_bias: float = 8.0, device=None) -> torch.Tensor:
    """BLOOM's slopes, generalised to any ``max_bias`` as MPT's ``alibi_bias_max``: for the largest
    power of two n <= num_heads, the geometric sequence 2**(-max_bias * k / n), k = 1..n, then
    every other slope of the sequence for 2n (k = 1, 3, 5, ...) for the remaining heads. MPT's
    construction (ceil to a power of two, odd then even positions) gives the same slopes."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-max_bias / closest), dtype=torch.float32, device=device)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32, device=device))
    if closest != num_heads:
        extra_base = torch.tensor(2 ** (-max_bias / (2 * closest)), dtype=torch.float32, device=device)
        remaining = min(closest, num_heads - closest)
        extra = torch.pow(extra_base, torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32, device=device))
        slopes = torch.cat([slopes, extra])
    return slopes  # [H]


class ALiBi(nn.Module):
    """Attention with linear biases (BLOOM, MPT). The bias is ``slope_h * key_position``: softmax is
    invariant to the per-query constant that ``-slope_h * query_position`` would add, so only the
    key positions matter, exactly as in BLOOM. ``max_bias`` sets the slopes (MPT's alibi_bias_max);
    ``scale`` multiplies the bias: the attention's score scale for Falcon, whose bias is added
    before the scores are scaled (``(q·k + alibi) * scale``)."""

    def __init__(self, *, num_heads: int, max_bias: float = 8.0, scale: float = 1.0):
        super().__init__()
        self.num_heads, self.max_bias, self.scale = num_heads, max_bias, scale

    def forward(self, query_pos, key_pos, query_seg=None, key_seg=None) -> PositionEncoding:
        slopes = alibi_slopes(self.num_heads, self.max_bias, key_pos.device) * self.scale  # [H], fp32 always
        bias = slopes[None, :, None, None] * key_pos[:, None, None, :].float()  # [B, H, 1, K]
        return PositionEncoding(_identity, bias)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, max_bias={self.max_bias}, scale={self.scale}"


def relative_position_bucket(relative: torch.Tensor, *, num_buckets: int, max_distance: int,
                             bidirectional: bool) -> torch.Tensor:
    """T5's bucketing of ``key_pos - query_pos``: exact buckets for small distances, logarithmic
    ones up to ``max_distance``; bidirectional schemes spend half the buckets on each side."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = (relative > 0).to(relative.dtype) * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (
        torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(relative.dtype)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


class BucketBias(nn.Module):
    """Learned bias per relative-position bucket and head, shared by all layers (T5, CPM-Ant).

    With ``num_segments > 0`` (CPM-Ant), a query and key in different segments use one of
    ``num_segments**2`` segment-pair buckets (stored after the position buckets) instead of the
    position bucket."""

    def __init__(self, *, num_heads: int, num_buckets: int, max_distance: int, bidirectional: bool,
                 num_segments: int = 0):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional, self.num_segments = bidirectional, num_segments
        self.weight = nn.Parameter(torch.empty(num_segments * num_segments + num_buckets, num_heads))

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        self.weight.data.normal_(0.0, std, generator=generator)

    def forward(self, query_pos, key_pos, query_seg=None, key_seg=None) -> PositionEncoding:
        relative = key_pos[:, None, :] - query_pos[:, :, None]  # [B, Q, K]
        buckets = relative_position_bucket(relative, num_buckets=self.num_buckets,
                                           max_distance=self.max_distance, bidirectional=self.bidirectional)
        if self.num_segments:
            pair = self.num_buckets + query_seg[:, :, None] * self.num_segments + key_seg[:, None, :]  # [B, Q, K]
            buckets = torch.where(query_seg[:, :, None] == key_seg[:, None, :], buckets, pair)
        bias = F.embedding(buckets, self.weight).permute(0, 3, 1, 2)  # [B, H, Q, K]
        return PositionEncoding(_identity, bias)

    def extra_repr(self) -> str:
        return (f"num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
                f"bidirectional={self.bidirectional}, num_segments={self.num_segments}")
