"""Self-attention blocks. Grouped-query attention: MHA (num_kv_heads == num_heads), GQA and MQA
(num_kv_heads == 1) are all one block; multi-head latent attention (DeepSeek-V2/V3) is the other."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class Attention(nn.Module):
    """Self-attention with an optional KV cache.

    ``qkv`` maps [B, S, D] to (q [B, S, H*Dh], k [B, S, Hkv*Dh], v [B, S, Hkv*Dh]) and ``out``
    maps [B, S, H*Dh] back to [B, S, D]. ``head_dim`` is independent of the model width.

    Options, each chosen at construction: ``q_norm``/``k_norm`` normalise the projected queries
    and keys (Qwen3, OLMo 2, Cohere), before ``clip_qkv`` clamps q, k and v to [-clip_qkv, clip_qkv]
    (OLMo, MPT; OLMoE does both in this order). ``scale`` multiplies the scores (default
    head_dim**-0.5). ``softcap`` caps the scaled scores at ``tanh(s / softcap) * softcap`` before
    ``scores_bias`` is applied (Gemma 2); SDPA cannot, so attention is then computed explicitly.
    ``sliding_window``: the window the model's ``scores_bias`` restricts this layer to, which the
    block tells the cache so it keeps only the keys still visible (None: every key)."""

    def __init__(self, *, num_heads: int, num_kv_heads: int, head_dim: int, qkv: nn.Module,
                 out: nn.Linear, dropout: float = 0.0, layer_idx: int = 0, scale: float | None = None,
                 softcap: float | None = None, clip_qkv: float | None = None, q_norm: nn.Module | None = None,
                 k_norm: nn.Module | None = None, sliding_window: int | None = None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.qkv, self.out = qkv, out
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()
        self.clip = nn.Hardtanh(-clip_qkv, clip_qkv) if clip_qkv is not None else nn.Identity()  # a clamp
        self.dropout, self.layer_idx = dropout, layer_idx
        self.sliding_window = sliding_window
        self.scale = scale if scale is not None else head_dim**-0.5
        self.cap = SoftCap(cap=softcap) if softcap is not None else nn.Identity()
        self.sdpa = softcap is None  # whether SDPA can compute these scores

    def forward(self, x: torch.Tensor, *, rotate: Callable[[torch.Tensor], torch.Tensor],
                scores_bias: torch.Tensor, cache=None, start: int = 0,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``scores_bias`` [B or 1, H or 1, S, K] is added to the scaled scores: the mask (0 or a large
        negative number) plus any position bias; None means causal, query i sees keys 0...i (SDPA's
        ``is_causal``; a single query sees every key). ``start`` is where these tokens go in the cache."""
        q, k, v = self.qkv(x)  # [B, S, H*Dh], [B, S, Hkv*Dh], [B, S, Hkv*Dh]
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self.clip(q), self.clip(k), self.clip(v)
        q = rotate(rearrange(q, "b s (h d) -> b h s d", d=self.head_dim))  # [B, H, S, Dh]
        k = rotate(rearrange(k, "b s (h d) -> b h s d", d=self.head_dim))  # [B, Hkv, S, Dh]
        v = rearrange(v, "b s (h d) -> b h s d", d=self.head_dim)  # [B, Hkv, S, Dh]
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, start, window=self.sliding_window)  # [B, Hkv, K, Dh]
        dropout = self.dropout if self.training else 0.0
        if need_weights or not self.sdpa:
            y, weights = _attention_with_weights(q, k, v, scores_bias, self.scale, dropout, self.cap)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(scores_bias, q.dtype), dropout_p=dropout,
                                               is_causal=_is_causal(scores_bias, q), scale=self.scale,
                                               enable_gqa=self.num_kv_heads != self.num_heads)
            weights = None
        y = rearrange(y, "b h s d -> b s (h d)")  # [B, S, H*Dh]
        return self.out(y), weights if need_weights else None


class LowRank(nn.Module):
    """``up(norm(down(x)))``: a projection through a normalised bottleneck (DeepSeek's q_lora_rank)."""

    def __init__(self, *, down: nn.Linear, norm: nn.Module, up: nn.Linear):
        super().__init__()
        self.down, self.norm, self.up = down, norm, up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.norm(self.down(x)))


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, DeepSeek-V3): keys and values are expanded from a
    per-token latent, and the cache holds that latent instead of per-head keys and values.

    ``q`` maps [B, S, D] to queries [B, S, H*(Dn+Dr)] (a plain linear, or ``LowRank``). ``kv_down``
    maps [B, S, D] to the latent [R] and one rotary key [Dr] shared by all heads; ``kv_norm``
    normalises the latent; ``kv_up`` expands it to each head's unrotated key [Dn] and value [Dv].
    Only the last Dr channels of queries and keys are rotated (``rotate`` from the position scheme,
    built for Dr channels). The cache stores the normalised latent [B, 1, S, R] as keys and the
    rotated shared key [B, 1, S, Dr] as values, as transformers' DeepseekV3Attention does."""

    def __init__(self, *, num_heads: int, qk_nope_head_dim: int, qk_rope_head_dim: int, v_head_dim: int,
                 kv_lora_rank: int, q: nn.Module, kv_down: nn.Linear, kv_norm: nn.Module, kv_up: nn.Linear,
                 out: nn.Linear, scale: float, dropout: float = 0.0, layer_idx: int = 0):
        super().__init__()
        self.num_heads, self.kv_lora_rank = num_heads, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.q, self.kv_down, self.kv_norm, self.kv_up, self.out = q, kv_down, kv_norm, kv_up, out
        self.scale, self.dropout, self.layer_idx = scale, dropout, layer_idx

    def forward(self, x: torch.Tensor, *, rotate: Callable[[torch.Tensor], torch.Tensor],
                scores_bias: torch.Tensor, cache=None, start: int = 0,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``Attention.forward``."""
        H, Dn, Dr, Dv = self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        q = rearrange(self.q(x), "b s (h d) -> b h s d", h=H)  # [B, H, S, Dn+Dr]
        q_pass, q_rot = q.split([Dn, Dr], dim=-1)  # [B, H, S, Dn], [B, H, S, Dr]
        q = torch.cat((q_pass, rotate(q_rot)), dim=-1)  # [B, H, S, Dn+Dr]
        latent, k_rot = self.kv_down(x).split([self.kv_lora_rank, Dr], dim=-1)  # [B, S, R], [B, S, Dr]
        latent = self.kv_norm(latent)[:, None]  # [B, 1, S, R]
        k_rot = rotate(k_rot[:, None])  # [B, 1, S, Dr]
        if cache is not None:
            latent, k_rot = cache.update(self.layer_idx, latent, k_rot, start)  # [B, 1, K, R], [B, 1, K, Dr]
        kv = rearrange(self.kv_up(latent[:, 0]), "b k (h d) -> b h k d", h=H)  # [B, H, K, Dn+Dv]
        k_pass, v = kv.split([Dn, Dv], dim=-1)  # [B, H, K, Dn], [B, H, K, Dv]
        k = torch.cat((k_pass, k_rot.expand(-1, H, -1, -1)), dim=-1)  # [B, H, K, Dn+Dr]
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            y, weights = _attention_with_weights(q, k, v, scores_bias, self.scale, dropout, _uncapped)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(scores_bias, q.dtype), dropout_p=dropout,
                                               is_causal=_is_causal(scores_bias, q), scale=self.scale)  # [B, H, S, Dv]
            weights = None
        y = rearrange(y, "b h s d -> b s (h d)")  # [B, S, H*Dv]
        return self.out(y), weights


class SoftCap(nn.Module):
    """``tanh(x / cap) * cap``: Gemma 2's soft-capping of attention scores and of the final logits."""

    def __init__(self, *, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / self.cap) * self.cap

    def extra_repr(self) -> str:
        return f"cap={self.cap}"


def _uncapped(scores: torch.Tensor) -> torch.Tensor:
    return scores


def _is_causal(scores_bias: torch.Tensor | None, q: torch.Tensor) -> bool:
    """Whether SDPA applies its causal mask: for ``scores_bias`` None and more than one query."""
    return scores_bias is None and q.shape[-2] > 1


def _sdpa_mask(scores_bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``scores_bias`` as SDPA's ``attn_mask``, in the queries' dtype (they differ under autocast)."""
    return None if scores_bias is None else scores_bias.to(dtype)


def _attention_with_weights(q, k, v, scores_bias, scale, dropout, cap):
    """The explicit computation, for callers that asked to see the attention probabilities and for
    capped scores. ``cap`` maps the scaled scores before ``scores_bias`` (as ``Attention.forward``
    takes it) is added."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # [B, H, K, Dh]
    scores = cap(torch.matmul(q, k.transpose(-1, -2)) * scale)  # [B, H, S, K]
    S, K = scores.shape[-2:]
    if scores_bias is not None:
        scores = scores + scores_bias
    elif S > 1:  # causal: query i sees keys 0...i
        scores = scores.masked_fill(torch.ones(S, K, dtype=torch.bool, device=q.device).triu(1),
                                    torch.finfo(scores.dtype).min)  # [B, H, S, K]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # [B, H, S, K]
    y = torch.matmul(F.dropout(weights, p=dropout), v)  # [B, H, S, Dv]
    return y, weights
