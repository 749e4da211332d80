"""Feed-forward blocks."""

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU (GLM-4, Seed-OSS) or GeGLU (CPM-Ant).

    ``gate_up`` returns ``(gate, up)``: a fused projection (GLM-4's ``gate_up_proj``) or two."""

    def __init__(self, *, activation: str, gate_up: nn.Module, down: nn.Linear):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.gate_up, self.down = gate_up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)  # 2 x [B, S, I]
        return self.down(self.act(gate) * up)  # [B, S, D]


class PlainMLP(nn.Module):
    """down(act(up(x))), as BLOOM's dense_h_to_4h -> GELU -> dense_4h_to_h."""

    def __init__(self, *, activation: str, up: nn.Linear, down: nn.Linear):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.up, self.down = up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))  # [B, S, D]
