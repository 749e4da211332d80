"""Layer wirings: how a layer connects its norms, attention and MLP around the residual stream.

Every layer's forward is ``(x, **attention_kwargs) -> (x, attention weights or None)``; the
attention keyword arguments go to the attention block unchanged."""

import torch
import torch.nn.functional as F
from torch import nn


def _identity_if_none(module: nn.Module | None) -> nn.Module:
    return module if module is not None else nn.Identity()


class _Residual(nn.Module):
    """A layer adding branch outputs to the residual stream, each dropped out (``dropout``) and
    multiplied by ``residual_scale``."""

    dropout: float
    residual_scale: float

    def branch(self, y: torch.Tensor) -> torch.Tensor:
        """What a branch output [B, S, D] adds to the residual stream."""
        return F.dropout(y, self.dropout, self.training) * self.residual_scale


class SequentialLayer(_Residual):
    """Attention, then MLP, each as ``x + post_norm(branch(norm(x)))``; a norm left out is the
    identity. Pre-norm has the ``norm`` (Llama), sandwich both (Gemma 2), OLMo 2 only the
    ``post_norm``. ``residual_from_norm`` adds the branch to ``norm(x)`` instead of ``x`` (BLOOM's
    ``apply_residual_connection_post_layernorm``); ``dropout`` drops each branch output and
    ``residual_scale`` multiplies it before it is added (Granite's ``residual_multiplier``)."""

    def __init__(self, *, attention: nn.Module, mlp: nn.Module, attn_norm: nn.Module | None = None,
                 attn_post_norm: nn.Module | None = None, mlp_norm: nn.Module | None = None,
                 mlp_post_norm: nn.Module | None = None, residual_from_norm: bool = False, dropout: float = 0.0,
                 residual_scale: float = 1.0):
        super().__init__()
        self.attn_norm, self.attention = _identity_if_none(attn_norm), attention
        self.attn_post_norm = _identity_if_none(attn_post_norm)
        self.mlp_norm, self.mlp = _identity_if_none(mlp_norm), mlp
        self.mlp_post_norm = _identity_if_none(mlp_post_norm)
        self.residual_from_norm, self.dropout, self.residual_scale = residual_from_norm, dropout, residual_scale

    def forward(self, x: torch.Tensor, **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.attn_norm(x)  # [B, S, D]
        a, weights = self.attention(h, **attention_kwargs)  # [B, S, D]
        x = (h if self.residual_from_norm else x) + self.branch(self.attn_post_norm(a))
        h = self.mlp_norm(x)  # [B, S, D]
        m = self.mlp_post_norm(self.mlp(h))  # [B, S, D]
        x = (h if self.residual_from_norm else x) + self.branch(m)
        return x, weights


class ParallelLayer(_Residual):
    """Attention and MLP side by side on the same input: ``x + attn(norm(x)) + mlp(mlp_norm(x))``,
    with ``mlp_norm`` None meaning the one norm feeds both (GPT-J, Phi, Falcon 7B). Each branch
    output is dropped out and multiplied by ``residual_scale``."""

    def __init__(self, *, attn_norm: nn.Module, attention: nn.Module, mlp: nn.Module,
                 mlp_norm: nn.Module | None = None, dropout: float = 0.0, residual_scale: float = 1.0):
        super().__init__()
        self.attn_norm, self.attention, self.mlp = attn_norm, attention, mlp
        self.mlp_norm = mlp_norm
        self.dropout, self.residual_scale = dropout, residual_scale

    def forward(self, x: torch.Tensor, **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.attn_norm(x)  # [B, S, D]
        a, weights = self.attention(h, **attention_kwargs)  # [B, S, D]
        m = self.mlp(self.mlp_norm(x) if self.mlp_norm is not None else h)  # [B, S, D]
        return x + self.branch(a) + self.branch(m), weights


class PostNormLayer(_Residual):
    """The original transformer's order: ``norm(x + attn(x))`` then ``norm(x + mlp(x))`` (OPT-350m).
    Each branch output is dropped out and multiplied by ``residual_scale``."""

    def __init__(self, *, attention: nn.Module, attn_norm: nn.Module, mlp: nn.Module, mlp_norm: nn.Module,
                 dropout: float = 0.0, residual_scale: float = 1.0):
        super().__init__()
        self.attention, self.attn_norm, self.mlp, self.mlp_norm = attention, attn_norm, mlp, mlp_norm
        self.dropout, self.residual_scale = dropout, residual_scale

    def forward(self, x: torch.Tensor, **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attention(x, **attention_kwargs)  # [B, S, D]
        x = self.attn_norm(x + self.branch(a))  # [B, S, D]
        x = self.mlp_norm(x + self.branch(self.mlp(x)))  # [B, S, D]
        return x, weights
