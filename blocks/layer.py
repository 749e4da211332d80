"""The transformer layer: attention and MLP, each behind a norm and a residual connection."""

import torch
import torch.nn.functional as F
from torch import nn


class TransformerLayer(nn.Module):
    """Pre-norm layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

    ``residual_from_norm=True`` takes the residual from the normed input instead (BLOOM's
    ``apply_residual_connection_post_layernorm``). ``residual_dropout`` drops each branch output
    before it is added (Seed-OSS's ``residual_dropout``, BLOOM's ``hidden_dropout``)."""

    def __init__(self, *, attn_norm: nn.Module, attention: nn.Module, mlp_norm: nn.Module, mlp: nn.Module,
                 residual_from_norm: bool = False, residual_dropout: float = 0.0):
        super().__init__()
        self.attn_norm, self.attention = attn_norm, attention
        self.mlp_norm, self.mlp = mlp_norm, mlp
        self.residual_from_norm, self.residual_dropout = residual_from_norm, residual_dropout

    def forward(self, x: torch.Tensor, **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.attn_norm(x)  # [B, S, D]
        a, weights = self.attention(h, **attention_kwargs)  # [B, S, D]
        x = (h if self.residual_from_norm else x) + F.dropout(a, self.residual_dropout, self.training)
        h = self.mlp_norm(x)  # [B, S, D]
        x = (h if self.residual_from_norm else x) + F.dropout(self.mlp(h), self.residual_dropout, self.training)
        return x, weights
