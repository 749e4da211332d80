"""Normalisation layers."""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (GLM-4, Seed-OSS, CPM-Ant). Statistics in fp32, the scale applied in
    the input dtype, as the references do."""

    def __init__(self, *, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)  # [B, S, 1]
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def LayerNorm(*, dim: int, eps: float, bias: bool = True) -> nn.LayerNorm:
    """Standard LayerNorm (BLOOM)."""
    return nn.LayerNorm(dim, eps=eps, bias=bias)
