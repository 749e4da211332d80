"""Position schemes. Each answers one question for a batch of query and key positions:

    encode(query_pos [B, Q], key_pos [B, K], query_seg, key_seg) -> PositionEncoding(rotate, bias)

``rotate`` is applied to queries and keys ([B, H, S, D] -> same; the identity for bias-only
schemes) and ``bias`` ([B, H, Q, K] or None) is added to the attention scores. The model calls
the scheme once per forward and hands the result to every layer. Tables (inverse frequencies,
slopes, bucket biases) are built once, at construction."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

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


def rope_inv_freq(rotary_dim: int, theta: float, device=None) -> torch.Tensor:
    """RoFormer's rotation frequencies ``theta ** (-2i / rotary_dim)`` [R/2], in fp32."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float, device=device) / rotary_dim  # [R/2]
    return 1.0 / (theta**exponents)


class RopeScaling:
    """RoPE's frequencies as published (transformers' ``rope_type: default``). Subclasses rescale
    them to reach past the length a model was trained on; each follows the function of the same
    ``rope_type`` in transformers' ``modeling_rope_utils`` operation by operation, so the fp32
    frequencies are the same to the bit.

    ``inv_freq`` returns the frequencies [R/2]; ``seq_len`` (a 0-d tensor, one past the largest
    position of this forward) is read only by the scalings with ``by_length`` true.
    ``attention_factor`` multiplies cos and sin (YaRN, LongRoPE)."""

    attention_factor: float = 1.0
    by_length: ClassVar[bool] = False

    def inv_freq(self, *, rotary_dim: int, theta: float, device=None, seq_len: torch.Tensor | None = None
                 ) -> torch.Tensor:
        return rope_inv_freq(rotary_dim, theta, device)  # [R/2]


@dataclass(frozen=True)
class LinearScaling(RopeScaling):
    """Position interpolation: every frequency divided by ``factor`` (kaiokendev's SuperHOT,
    Gemma 3's global layers; ``rope_type: linear``)."""

    factor: float

    def inv_freq(self, *, rotary_dim, theta, device=None, seq_len=None):
        return rope_inv_freq(rotary_dim, theta, device) / self.factor  # [R/2]


@dataclass(frozen=True)
class DynamicNTKScaling(RopeScaling):
    """Dynamic NTK-aware scaling (``rope_type: dynamic``; InternLM2): past ``original_max_positions`` the
    base ``theta`` grows with the length reached, ``theta * (factor * L / original - (factor - 1))
    ** (R / (R - 2))``; up to it the frequencies are RoPE's.

    Stateless: ``L`` is one past the largest query position of this forward. transformers keeps the
    frequencies of the longest length seen so far (and returns to the original ones when a shorter
    forward than ``original_max_positions`` comes); since positions only grow while generating, the
    two agree there. They differ only for a forward that reaches less far than an earlier one but
    at least ``original_max_positions``, where transformers keeps the earlier, larger base."""

    factor: float
    original_max_positions: int
    by_length: ClassVar[bool] = True

    def inv_freq(self, *, rotary_dim, theta, device=None, seq_len=None):
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float, device=device) / rotary_dim  # [R/2]
        f, original, power = self.factor, self.original_max_positions, rotary_dim / (rotary_dim - 2)
        # transformers' frequencies at construction (Python floats; theta unless rounding says otherwise)
        base = theta * ((f * original / original) - (f - 1)) ** power
        within = 1.0 / (base**exponents)  # [R/2]
        if seq_len is None:
            return within
        length = seq_len.clamp(min=original)  # 0-d, integer as the positions
        grown = 1.0 / ((theta * ((f * length / original) - (f - 1)) ** power) ** exponents)  # [R/2]
        return torch.where(seq_len > original, grown, within)


def yarn_attention_factor(factor: float, mscale: float | None = None, mscale_all_dim: float | None = None) -> float:
    """YaRN's default ``attention_factor``: ``0.1 ln(factor) + 1``, or with DeepSeek's ``mscale``
    and ``mscale_all_dim`` (both non-zero) the ratio of that with each as the weight of the log."""

    def get_mscale(scale, weight=1):
        return 1.0 if scale <= 1 else 0.1 * weight * math.log(scale) + 1.0

    if mscale and mscale_all_dim:
        return float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
    return get_mscale(factor)


@dataclass(frozen=True)
class YarnScaling(RopeScaling):
    """YaRN (``rope_type: yarn``; Qwen2.5 long context, DeepSeek-V2/V3): frequencies that turn more
    than ``beta_fast`` times within ``original_max_positions`` are kept, those that turn fewer than
    ``beta_slow`` times are divided by ``factor``, with a linear ramp between; cos and sin are
    multiplied by ``attention_factor``."""

    factor: float
    original_max_positions: int
    attention_factor: float
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True

    def inv_freq(self, *, rotary_dim, theta, device=None, seq_len=None):
        dim = rotary_dim

        def correction_dim(rotations):  # the channel pair that turns `rotations` times in the original length
            return (dim * math.log(self.original_max_positions / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # as transformers, avoids dividing by zero
        pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim)  # [R/2]
        extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (self.factor * pos_freqs)  # [R/2]
        ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # [R/2], 1 where the frequency is kept
        return interpolation * (1 - keep) + extrapolation * keep  # [R/2]


def longrope_attention_factor(factor: float, original_max_positions: int) -> float:
    """LongRoPE's default ``attention_factor``: ``sqrt(1 + ln(factor) / ln(original_max_positions))``
    (1 when ``factor`` <= 1)."""
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original_max_positions))


@dataclass(frozen=True)
class LongRopeScaling(RopeScaling):
    """LongRoPE (``rope_type: longrope``; Phi-3 and Phi-3.5 long-context, Phi-4-mini): each
    frequency divided by its own factor, from ``short_factor`` while the forward stays within
    ``original_max_positions`` and from ``long_factor`` once it reaches past; cos and sin are
    multiplied by ``attention_factor``. Chosen from the largest query position of this forward, as
    transformers does (neither keeps state): a forward that reaches past the original length
    rotates all its positions with the long factors, and keys cached before keep theirs."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_positions: int
    attention_factor: float
    by_length: ClassVar[bool] = True

    def inv_freq(self, *, rotary_dim, theta, device=None, seq_len=None):
        shape = torch.arange(0, rotary_dim, 2, dtype=torch.float, device=device) / rotary_dim  # [R/2]
        short = 1.0 / (torch.tensor(self.short_factor, dtype=torch.float32, device=device) * theta**shape)
        if seq_len is None:
            return short  # [R/2]
        long = 1.0 / (torch.tensor(self.long_factor, dtype=torch.float32, device=device) * theta**shape)
        return torch.where(seq_len > self.original_max_positions, long, short)  # [R/2]


@dataclass(frozen=True)
class Llama3Scaling(RopeScaling):
    """Llama 3.1's scaling (``rope_type: llama3``; Llama 3.1-3.3): wavelengths shorter than
    ``original_max_positions / high_freq_factor`` are kept, those longer than
    ``original_max_positions / low_freq_factor`` are divided by ``factor``, and the band between
    is interpolated smoothly."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_positions: int

    def inv_freq(self, *, rotary_dim, theta, device=None, seq_len=None):
        inv_freq = rope_inv_freq(rotary_dim, theta, device)  # [R/2]
        original, factor = self.original_max_positions, self.factor
        wavelen = 2 * math.pi / inv_freq
        low_freq_wavelen, high_freq_wavelen = original / self.low_freq_factor, original / self.high_freq_factor
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return torch.where(medium, smoothed, scaled)  # [R/2]


class Rotary(nn.Module):
    """Rotary embedding over the first ``rotary_dim`` channels of each head.

    ``interleaved=False`` rotates the two halves of that width (Llama, Seed-OSS);
    ``interleaved=True`` rotates adjacent pairs (GLM-4, which also rotates only part of the head).
    ``scaling`` rescales the frequencies for long contexts (``LinearScaling``, ``YarnScaling``, ...);
    None keeps RoPE's."""

    def __init__(self, *, head_dim: int, rotary_dim: int, theta: float, interleaved: bool,
                 scaling: RopeScaling | None = None):
        super().__init__()
        self.head_dim, self.rotary_dim, self.interleaved, self.theta = head_dim, rotary_dim, interleaved, theta
        self.scaling = scaling if scaling is not None else RopeScaling()
        self.attention_factor, self.by_length = self.scaling.attention_factor, self.scaling.by_length

    def inv_freq(self, device, seq_len: torch.Tensor | None = None) -> torch.Tensor:
        """The rotation frequencies [R/2] for a forward whose positions stay below ``seq_len``
        (read only when ``by_length``: dynamic NTK, LongRoPE)."""
        return self.scaling.inv_freq(rotary_dim=self.rotary_dim, theta=self.theta, device=device, seq_len=seq_len)

    def forward(self, query_pos, key_pos, query_seg=None, key_seg=None) -> PositionEncoding:
        # Frequencies are recomputed in fp32 (a few dozen values) so casting the model to bf16
        # cannot round them, as it would a buffer.
        if self.by_length:  # the frequencies follow the length this forward reaches
            inv_freq = self.inv_freq(query_pos.device, query_pos.max() + 1)  # [R/2]
        else:
            inv_freq = self.inv_freq(query_pos.device)  # [R/2]
        angles = query_pos[..., None].float() * inv_freq  # [B, S, R/2]
        cos, sin = angles.cos(), angles.sin()  # [B, S, R/2]
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        turn = torch.complex(cos, sin)[:, None]  # [B, 1, S, R/2]: each channel pair's rotation
        if self.interleaved:  # pairs (x0, x1), (x2, x3), ...: frequencies (f0, f0, f1, f1, ...)
            cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)  # [B, S, R]
        else:  # pairs (x0, x_R/2), ...: frequencies (f0, f1, ..., f0, f1, ...)
            cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)  # [B, S, R]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, S, R]
        rotate_pairs = _rotate_interleaved if self.interleaved else _rotate_half
        rotary_dim, interleaved = self.rotary_dim, self.interleaved

        def rotate(x: torch.Tensor) -> torch.Tensor:  # x: [B, H, S, D]
            x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
            if _turns_as_complex(x_rot, interleaved):
                rotated = _turn_complex(x_rot, turn, interleaved)
            else:
                rotated = x_rot * cos.to(x.dtype) + rotate_pairs(x_rot) * sin.to(x.dtype)
            return torch.cat((rotated, x_pass), dim=-1) if x_pass.shape[-1] else rotated

        return PositionEncoding(rotate, None)

    def extra_repr(self) -> str:
        scaling = f", scaling={self.scaling}" if type(self.scaling) is not RopeScaling else ""
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, interleaved={self.interleaved}{scaling}"


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _turns_as_complex(x_rot: torch.Tensor, interleaved: bool) -> bool:
    """Whether to rotate ``x_rot`` as complex numbers, one product instead of six passes over it:
    in fp32 and fp64 (no complex bfloat16), outside torch.compile (which fuses the real form, and
    has no complex kernels), and for adjacent pairs only where they sit as complex numbers would
    in memory (halves are gathered into a fresh tensor). The same products and sums as the real
    form; they differ only where a kernel fuses a multiply-add (an ulp; bit-equal in most here)."""
    if torch.compiler.is_compiling() or x_rot.dtype not in _COMPLEX:
        return False
    return not interleaved or (x_rot.stride(-1) == 1 and x_rot.storage_offset() % 2 == 0
                               and all(step % 2 == 0 for step in x_rot.stride()[:-1]))


def _turn_complex(x_rot: torch.Tensor, turn: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """``x_rot`` [..., R] with each channel pair multiplied by ``turn`` [..., R/2] (complex)."""
    R = x_rot.shape[-1]
    if interleaved:
        pairs = x_rot.unflatten(-1, (R // 2, 2))  # [..., R/2, 2], a view
    else:
        pairs = torch.stack(x_rot.chunk(2, dim=-1), dim=-1)  # [..., R/2, 2], a fresh tensor
    turned = torch.view_as_real(torch.view_as_complex(pairs) * turn.to(_COMPLEX[x_rot.dtype]))  # [..., R/2, 2]
    return turned.flatten(-2) if interleaved else turned.transpose(-1, -2).flatten(-2)  # [..., R]


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
    before the scores are scaled (``(q·k + alibi) * scale``). ``bias_dtype`` bfloat16 rounds the
    slopes, the positions and their products to bfloat16 before scaling, as Falcon computes it."""

    def __init__(self, *, num_heads: int, max_bias: float = 8.0, scale: float = 1.0,
                 bias_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_heads, self.max_bias, self.scale, self.bias_dtype = num_heads, max_bias, scale, bias_dtype

    def forward(self, query_pos, key_pos, query_seg=None, key_seg=None) -> PositionEncoding:
        slopes = alibi_slopes(self.num_heads, self.max_bias, key_pos.device)  # [H], fp32 whatever the model dtype
        if self.bias_dtype == torch.float32:
            bias = (slopes * self.scale)[None, :, None, None] * key_pos[:, None, None, :].float()  # [B, H, 1, K]
        else:  # Falcon: each of slope, position and their product rounded to bfloat16, then scaled in fp32
            bias = (slopes.to(self.bias_dtype)[None, :, None, None] * key_pos[:, None, None, :]).float() * self.scale
        return PositionEncoding(_identity, bias)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, max_bias={self.max_bias}, scale={self.scale}, "
                f"bias_dtype={self.bias_dtype}")


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
