"""Input kinds: input ids (or embeddings) -> the first hidden states.

Every input module has the interface of ``TokenEmbedding``: ``num_prepended`` tokens it puts in
front of the first forward, whether that forward's tokens are prefix-LM ``context``, and a
``forward`` that embeds one step and returns ``Embedded``. The model handles prepended tokens,
segment ids and context generically, so a new input quirk is a new kind, not a change to the
model."""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from archcomposer.errors import InputError


class Embedded(NamedTuple):
    x: torch.Tensor  # [B, S', D]: this step's hidden states, S' = S + tokens prepended this step
    segments: torch.Tensor | None  # [B, S'] segment ids, or None
    context: torch.Tensor | None  # [B, S'] bool: prefix-LM context (attends both ways within the step), or None


class TokenEmbedding(nn.Module):
    """Token embedding times ``scale`` (Gemma, Granite), plus learned absolute positions at
    ``position + position_offset`` (GPT-2, OPT), then an optional norm (BLOOM), then ``dropout``
    in training (GPT-NeoX, StarCoder 2, Phi). ``scale_inputs_embeds=False`` leaves embeddings
    passed as ``inputs_embeds`` unscaled (Gemma scales inside its embedding table; Granite after it)."""

    num_prepended = 0
    prefix_lm = False

    def __init__(self, *, tokens: nn.Embedding, scale: float = 1.0, positions: nn.Embedding | None = None,
                 position_offset: int = 0, norm: nn.Module | None = None, dropout: float = 0.0,
                 scale_inputs_embeds: bool = True):
        super().__init__()
        self.tokens, self.scale, self.dropout = tokens, scale, dropout
        self.inputs_embeds_scale = scale if scale_inputs_embeds else 1.0
        self.positions, self.position_offset = positions, position_offset
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, *, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, positions: torch.Tensor,
                token_mask: torch.Tensor, first: bool, prefix_mask: torch.Tensor | None = None) -> Embedded:
        if prefix_mask is not None:
            raise InputError("prefix_mask marks prefix-LM context, which only an embedding kind with a prefix-LM "
                             "mask (such as 'prompt_segments') has")
        x = self.tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, S, D]
        scale = self.scale if inputs_embeds is None else self.inputs_embeds_scale
        if scale != 1.0:
            x = x * torch.tensor(scale, dtype=x.dtype)  # the scale rounded to the model dtype, as Gemma does
        if self.positions is not None:
            index = positions + self.position_offset  # [B, S]
            # A value check (a host sync): eager calls only, not while torch.compile/export traces.
            if not torch.compiler.is_compiling() and index.numel() and index.max() >= self.positions.num_embeddings:
                raise InputError(f"position {int(index.max()) - self.position_offset} is beyond the "
                                 f"{self.positions.num_embeddings - self.position_offset} learned positions "
                                 f"(max_positions)")
            x = x + self.positions(index)  # [B, S, D]
        return Embedded(F.dropout(self.norm(x), self.dropout, self.training), None, None)


class PromptSegmentsEmbedding(nn.Module):
    """CPM-Ant's input. On the first forward, ``prompt_length`` learned prompt tokens (rows
    ``prompt_start...`` of the token table) go in front of the input; every token gets a segment
    embedding (input tokens ``token_segment``, prompt and pad tokens 0); and the first forward's
    tokens are prefix-LM context, narrowed by ``prefix_mask`` (1: context) when given."""

    prefix_lm = True

    def __init__(self, *, tokens: nn.Embedding, segments: nn.Embedding, prompt_start: int, prompt_length: int,
                 token_segment: int):
        super().__init__()
        self.tokens, self.segments = tokens, segments
        self.prompt_start, self.num_prepended, self.token_segment = prompt_start, prompt_length, token_segment

    def forward(self, *, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, positions: torch.Tensor,
                token_mask: torch.Tensor, first: bool, prefix_mask: torch.Tensor | None = None) -> Embedded:
        x = self.tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, S, D]
        B, S = x.shape[:2]
        P = self.num_prepended if first else 0
        if P:
            prompt = torch.arange(self.prompt_start, self.prompt_start + P, device=x.device)  # [P]
            x = torch.cat([self.tokens(prompt).to(x.dtype).expand(B, P, -1), x], dim=1)  # [B, P+S, D]
        segments = torch.where(token_mask, self.token_segment, 0)  # [B, P+S]
        segments[:, :P] = 0
        context = None
        if first:
            context = torch.ones(B, P + S, dtype=torch.bool, device=x.device)  # [B, P+S]
            if prefix_mask is not None:
                context[:, P:] = prefix_mask.to(x.device).bool()
        elif prefix_mask is not None:
            raise InputError("prefix_mask marks the context of the first forward; with a cache holding tokens, "
                             "every new token is a continuation")
        return Embedded(x + self.segments(segments), segments, context)
