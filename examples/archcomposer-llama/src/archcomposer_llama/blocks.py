"""The plugin's modules. Like archcomposer's own blocks, they take plain keyword-only dimensions
and already-built submodules, and never read a spec."""

import math

import torch
from torch import nn

from composer.blocks.attention import Attention
from composer.blocks.position import PositionEncoding


def llama3_inv_freq(*, head_dim: int, theta: float, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_max_positions: int, device=None) -> torch.Tensor:
    """Llama 3.1's RoPE frequencies: wavelengths shorter than ``original_max_positions /
    high_freq_factor`` are kept, those longer than ``original_max_positions / low_freq_factor``
    are divided by ``factor``, and the band between is interpolated smoothly."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim)  # [D/2]
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original_max_positions / low_freq_factor
    high_freq_wavelen = original_max_positions / high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)  # [D/2]


class Llama3Rotary(nn.Module):
    """Rotary embedding over the whole head, rotating the two halves, with Llama 3.1's scaled
    frequencies (Llama 3.1, 3.2 and 3.3)."""

    def __init__(self, *, head_dim: int, theta: float, factor: float, low_freq_factor: float,
                 high_freq_factor: float, original_max_positions: int):
        super().__init__()
        self.head_dim = head_dim
        self.scaling = {"theta": theta, "factor": factor, "low_freq_factor": low_freq_factor,
                        "high_freq_factor": high_freq_factor, "original_max_positions": original_max_positions}

    def forward(self, query_pos, key_pos, query_seg=None, key_seg=None) -> PositionEncoding:
        # In fp32 from plain floats on every call (a few dozen values), so casting the model to
        # bf16 cannot round the frequencies, as it would a buffer.
        inv_freq = llama3_inv_freq(head_dim=self.head_dim, device=query_pos.device, **self.scaling)  # [D/2]
        freqs = query_pos[..., None].float() * inv_freq  # [B, S, D/2]
        freqs = torch.cat((freqs, freqs), dim=-1)  # [B, S, D]
        cos, sin = freqs.cos()[:, None], freqs.sin()[:, None]  # [B, 1, S, D]

        def rotate(x: torch.Tensor) -> torch.Tensor:  # x: [B, H, S, D]
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)

        return PositionEncoding(rotate, None)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, " + ", ".join(f"{k}={v}" for k, v in self.scaling.items())


class SlidingWindowAttention(Attention):
    """Grouped-query attention in which each token sees itself and the ``window - 1`` tokens
    before it (Mistral 7B, Gemma 2's local layers). The window counts cache slots, as Mistral in
    transformers does; the cache still keeps every token."""

    def __init__(self, *, window: int, **attention):
        super().__init__(**attention)
        self.window = window

    def forward(self, x: torch.Tensor, *, scores_bias: torch.Tensor, start: int = 0, **kwargs):
        S, K = x.shape[1], scores_bias.shape[-1]
        query_slot = start + torch.arange(S, device=x.device)  # [S]
        key_slot = torch.arange(K, device=x.device)  # [K]
        outside = query_slot[:, None] - key_slot[None, :] >= self.window  # [S, K]
        scores_bias = scores_bias.masked_fill(outside, torch.finfo(scores_bias.dtype).min)  # [B, H or 1, S, K]
        return super().forward(x, scores_bias=scores_bias, start=start, **kwargs)

    def extra_repr(self) -> str:
        return f"window={self.window}"
