"""Layer wirings: how a layer connects its norms, attention and MLP around the residual stream.

Every layer's forward is ``(x, **attention_kwargs) -> (x, attention weights or None)``; the
attention keyword arguments go to the attention block unchanged."""

import torch
import torch.nn.functional as F
from torch import nn


def _identity_if_none(module: nn.Module | None) -> nn.Module:
    return module if module is not None else nn.Identity()


class SequentialLayer(nn.Module):
    """Attention, then MLP, each as ``x + post_norm(branch(norm(x)))``; a norm left out is the
    identity. Pre-norm has the ``norm`` (Llama), sandwich both (Gemma 2), OLMo 2 only the
    ``post_norm``. ``residual_from_norm`` adds the branch to ``norm(x)`` instead of ``x`` (BLOOM's
    ``apply_residual_connection_post_layernorm``); ``dropout`` drops each branch output."""

    def __init__(self, *, attention: nn.Module, mlp: nn.Module, attn_norm: nn.Module | None = None,
                 attn_post_norm: nn.Module | None = None, mlp_norm: nn.Module | None = None,
                 mlp_post_norm: nn.Module | None = None, residual_from_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.attn_norm, self.attention = _identity_if_none(attn_norm), attention
        self.attn_post_norm = _identity_if_none(attn_post_norm)
        self.mlp_norm, self.mlp = _identity_if_none(mlp_norm), mlp
        self.mlp_post_norm = _identity_if_none(mlp_post_norm)
        self.residual_from_norm, self.dropout = residual_from_norm, dropout

    def forward(self, x: torch.Tensor, **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.attn_norm(x)  # [B, S, D]
        a, weights = self.attention(h, **attention_kwargs)  # [B, S, D]
        x = (h if self.residual_from_norm else x) + F.dropout(self.attn_post_norm(a), self.dropout, self.training)
        h = self.mlp_norm(x)  # [B, S, D]
        m = self.mlp_post_norm(self.mlp(h))  # [B, S, D]
        x = (h if self.residual_from_norm else x) + F.dropout(m, self.dropout, self.training)
        return x, weights


class ParallelLayer(nn.Module):
    """Attention and MLP side by side on the same input: ``x + attn(norm(x)) + mlp(mlp_norm(x))``,
    with ``mlp_norm`` None meaning the one norm feeds both (GPT-J, Phi, Falcon 7B)."""

    def __init__(self, *, attn_norm: nn.Module, attention: nn.Module, mlp: nn.Module,
                 mlp_norm: nn.Module | None = None, dropout: float = 0.0):
        super().__init__()
        self.attn_norm, self.attention, self.mlp = attn_norm, attention, mlp
        self.mlp_norm = mlp_norm
        self.dropout = dropout

    def forward(self, x: torch.Tensor, **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.attn_norm(x)  # [B, S, D]
        a, weights = self.attention(h, **attention_kwargs)  # [B, S, D]
        m = self.mlp(self.mlp_norm(x) if self.mlp_norm is not None else h)  # [B, S, D]
        return x + F.dropout(a, self.dropout, self.training) + F.dropout(m, self.dropout, self.training), weights


class PostNormLayer(nn.Module):
    """The original transformer's order: ``norm(x + attn(x))`` then ``norm(x + mlp(x))`` (OPT-350m)."""

    def __init__(self, *, attention: nn.Module, attn_norm: nn.Module, mlp: nn.Module, mlp_norm: nn.Module,
                 dropout: float = 0.0):
        super().__init__()
        self.attention, self.attn_norm, self.mlp, self.mlp_norm = attention, attn_norm, mlp, mlp_norm
        self.dropout = dropout

    def forward(self, x: torch.Tensor, **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attention(x, **attention_kwargs)  # [B, S, D]
        x = self.attn_norm(x + F.dropout(a, self.dropout, self.training))  # [B, S, D]
        x = self.mlp_norm(x + F.dropout(self.mlp(x), self.dropout, self.training))  # [B, S, D]
        return x, weights
