"""Input embeddings."""

import torch
from torch import nn


class Embedding(nn.Module):
    """Token embedding, plus an optional segment embedding added to it (CPM-Ant) and an optional
    norm applied after (BLOOM's ``word_embeddings_layernorm``)."""

    def __init__(self, *, num_embeddings: int, hidden_size: int, num_segments: int = 0,
                 norm: nn.Module | None = None):
        super().__init__()
        self.tokens = nn.Embedding(num_embeddings, hidden_size)
        self.segments = nn.Embedding(num_segments, hidden_size) if num_segments else None
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, *, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, S, D]
        if self.segments is not None:
            x = x + self.segments(segment_ids)  # [B, S, D]
        return self.norm(x)
