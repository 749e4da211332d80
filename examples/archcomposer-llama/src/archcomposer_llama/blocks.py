"""The plugin's modules. Like archcomposer's own blocks, they take plain keyword-only dimensions
and already-built submodules, and never read a spec."""

import math

import torch

from archcomposer.blocks.attention import Attention
from archcomposer.blocks.position import Rotary


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


class Llama3Rotary(Rotary):
    """Rotary embedding over the whole head, rotating the two halves, with Llama 3.1's scaled
    frequencies (Llama 3.1, 3.2 and 3.3)."""

    def __init__(self, *, head_dim: int, theta: float, factor: float, low_freq_factor: float,
                 high_freq_factor: float, original_max_positions: int):
        super().__init__(head_dim=head_dim, rotary_dim=head_dim, theta=theta, interleaved=False)
        self.scaling = {"factor": factor, "low_freq_factor": low_freq_factor,
                        "high_freq_factor": high_freq_factor, "original_max_positions": original_max_positions}

    def inv_freq(self, device) -> torch.Tensor:
        return llama3_inv_freq(head_dim=self.head_dim, theta=self.theta, device=device, **self.scaling)  # [D/2]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, " + ", ".join(f"{k}={v}" for k, v in self.scaling.items())


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
