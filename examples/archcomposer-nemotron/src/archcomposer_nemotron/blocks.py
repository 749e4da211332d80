"""The plugin's modules. Like archcomposer's own blocks, they take plain keyword-only dimensions
and already-built submodules, and never read a spec."""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm1P(nn.Module):
    """LayerNorm whose scale is stored as ``w`` and applied as ``1 + w`` (Nemotron's
    ``NemotronLayerNorm1P``): a zero-initialised weight is the identity scale, which keeps weight
    decay from pulling the scale towards zero."""

    def __init__(self, *, dim: int, eps: float, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight + 1.0, self.bias, self.eps)  # [B, S, D]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


class SquaredReLUMLP(nn.Module):
    """down(relu(up(x))^2): the squared-ReLU feed-forward of Nemotron (and Primer)."""

    def __init__(self, *, up: nn.Linear, down: nn.Linear):
        super().__init__()
        self.up, self.down = up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())  # [B, S, D]
