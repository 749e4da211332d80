"""Multi-output input projections (q/k/v, gate/up), fused into one matmul or kept separate.

Both return a tuple of tensors in the same order, so the block using them has one code path."""

import torch
from torch import nn


class FusedProjection(nn.Module):
    """One Linear whose output rows are the concatenation of the parts, in order."""

    def __init__(self, *, proj: nn.Linear, sizes: list[int]):
        super().__init__()
        self.proj = proj
        self.sizes = list(sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(x).split(self.sizes, dim=-1)  # each [B, S, size_i]


class SplitProjection(nn.Module):
    """Separate Linears, named by the caller (``q``, ``k``, ``v`` or ``gate``, ``up``)."""

    def __init__(self, **projs: nn.Linear):
        super().__init__()
        self.names = list(projs)
        for name, proj in projs.items():
            self.add_module(name, proj)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name)(x) for name in self.names)  # each [B, S, size_i]
