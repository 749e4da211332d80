"""Normalisation layers. Statistics are always over the last axis. ``dim`` is the shape of the
learned weight: an int for one weight over the channels, or ``(num_heads, head_dim)`` for a weight
per head when normalising per-head vectors [..., H, Dh] (Cohere's and StableLM's q/k norms)."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

Shape = int | tuple[int, ...]


def _shape(dim: Shape) -> tuple[int, ...]:
    return (dim,) if isinstance(dim, int) else tuple(dim)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last axis, in fp32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm (GLM-4, Seed-OSS, CPM-Ant; Qwen3's q/k norm). Statistics in fp32,
    the scale applied in the input dtype, as the references do."""

    def __init__(self, *, dim: Shape, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(_shape(dim)))

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        self.weight.data.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * _rms(x, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class OffsetRMSNorm(RMSNorm):
    """RMSNorm scaling by ``1 + weight``, the weight initialised to zeros, all in fp32 and cast at
    the end (Gemma's GemmaRMSNorm, also Gemma 2 and 3)."""

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        self.weight.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_rms(x, self.eps) * (1.0 + self.weight.float())).type_as(x)


class ParameterFreeRMSNorm(nn.Module):
    """RMSNorm without a learned scale."""

    def __init__(self, *, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms(x, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class LayerNorm(nn.Module):
    """LayerNorm with a learned scale and, with ``bias``, shift over ``dim`` channels (BLOOM; Phi's
    and Persimmon's q/k norm per head with one weight for all heads). torch's fused kernel in the
    input dtype, as ``nn.LayerNorm``."""

    def __init__(self, *, dim: int, eps: float, bias: bool = True):
        super().__init__()
        self.normalized_shape, self.eps = (dim,), eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        _unit_scale_zero_shift(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, bias={self.bias is not None}"


class HeadLayerNorm(nn.Module):
    """LayerNorm of each head's vector [..., H, Dh] with each head's own scale (and shift) of shape
    ``dim = (H, Dh)``, in fp32 and cast at the end: Cohere's CohereLayerNorm((H, Dh)) for
    ``use_qk_norm``, and StableLM's per-head q/k LayerNorms (stacked into one weight)."""

    def __init__(self, *, dim: tuple[int, int], eps: float, bias: bool = True):
        super().__init__()
        self.normalized_shape, self.eps = (dim[-1],), eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        _unit_scale_zero_shift(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., H, Dh]
        y = F.layer_norm(x.float(), self.normalized_shape, None, None, self.eps) * self.weight.float()
        return (y if self.bias is None else y + self.bias.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, bias={self.bias is not None}"


def _unit_scale_zero_shift(norm: nn.Module) -> None:
    norm.weight.data.fill_(1.0)
    if norm.bias is not None:
        norm.bias.data.zero_()


class ParameterFreeLayerNorm(nn.Module):
    """LayerNorm without learned scale or shift, in fp32 and cast at the end (OLMo's OlmoLayerNorm)."""

    def __init__(self, *, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), x.shape[-1:], None, None, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class HeadNorm(nn.Module):
    """Applies ``norm`` to each ``head_dim``-wide head of a projection output [B, S, N*head_dim]:
    the q/k norm of Qwen3, Gemma 3, Phi, Cohere and StableLM. With ``head_dim`` the whole width it
    normalises the projection output as one vector (OLMo 2)."""

    def __init__(self, *, norm: nn.Module, head_dim: int):
        super().__init__()
        self.norm, self.head_dim = norm, head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = rearrange(x, "b s (h d) -> b s h d", d=self.head_dim)  # [B, S, N, Dh]
        return rearrange(self.norm(heads), "b s h d -> b s (h d)")  # [B, S, N*Dh]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}"
