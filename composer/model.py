"""The composed model: embedding -> position scheme -> layers -> final norm -> head."""

from __future__ import annotations

import torch
from torch import nn

from archcomposer import outputs
from archcomposer.blocks.embedding import Embedding
from archcomposer.blocks.layer import TransformerLayer
from archcomposer.cache import DynamicCache
from archcomposer.errors import InputError
from archcomposer.spec import ModelSpecBase


class ComposedModel(nn.Module):
    """A transformer language model built from a spec (see ``archcomposer.build_model``).

    ``forward`` follows transformers' conventions for every argument. Differences worth knowing:
    without ``position_ids``, positions follow ``attention_mask`` (cumulative count of real
    tokens), so a left-padded row gets the logits it gets alone; and a ``prefix_lm`` model treats
    the tokens of its first forward as bidirectional context (``prefix_mask`` narrows that)."""

    def __init__(self, spec: ModelSpecBase):
        super().__init__()
        self.spec = spec
        D = spec.hidden_size
        self.embedding = Embedding(
            num_embeddings=spec.num_embeddings, hidden_size=D,
            num_segments=spec.embedding.segments.num_types if spec.embedding.segments else 0,
            norm=spec.norm.build(D) if spec.embedding.norm else None)
        self.position = spec.position.build(spec)
        self.layers = nn.ModuleList(
            TransformerLayer(attn_norm=spec.norm.build(D), attention=spec.attention.build(spec, i),
                             mlp_norm=spec.norm.build(D), mlp=spec.mlp.build(spec),
                             residual_from_norm=spec.residual.from_norm, residual_dropout=spec.residual.dropout)
            for i in range(spec.num_layers))
        self.final_norm = spec.norm.build(D)
        self.heads = nn.ModuleDict({h.kind: h.build(spec, self.embedding) for h in spec.heads})
        self.head_specs = {h.kind: h for h in spec.heads}
        prompt = spec.embedding.prompt
        prompt_ids = torch.arange(spec.vocab_size + prompt.type * prompt.length,
                                  spec.vocab_size + (prompt.type + 1) * prompt.length) if prompt else torch.empty(0)
        self.register_buffer("prompt_ids", prompt_ids.long(), persistent=False)  # [P]
        self.prefix_lm = spec.attention.mask == "prefix_lm"
        self.token_segment = spec.embedding.segments.token_segment if spec.embedding.segments else None

    @property
    def prompt_length(self) -> int:
        return self.prompt_ids.numel()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=False,
                output_hidden_states=False, return_dict=True, logits_to_keep=0, *, start_positions=None,
                end_positions=None, prefix_mask=None, head: str | None = None):
        head_spec = self._head_spec(head)
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            self._check_ids(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.spec.hidden_size:
            raise InputError(f"inputs_embeds must be [batch, seq, hidden_size={self.spec.hidden_size}], "
                             f"got shape {tuple(inputs_embeds.shape)}")
        B, S = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if prefix_mask is not None and tuple(prefix_mask.shape) != (B, S):
            raise InputError(f"prefix_mask has shape {tuple(prefix_mask.shape)}; expected ({B}, {S}), like the input")
        if labels is not None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise InputError("labels need the logits of every position: leave logits_to_keep at 0")
        if use_cache is None:
            use_cache = head_spec is None or head_spec.returns_cache
        cache = past_key_values if past_key_values is not None else (DynamicCache() if use_cache else None)
        past = cache.get_seq_length() if cache is not None else 0
        P = self.prompt_length if past == 0 else 0  # the prompt is prepended once, on the first forward
        S_all, T = S + P, past + S + P  # tokens this step; tokens seen including this step
        K = cache.key_length(T) if cache is not None else T  # key slots attention sees

        key_mask, key_pos, segments = self._key_layout(B, S, T, K, past, attention_mask, position_ids, device)
        query_pos = key_pos[:, past:T]  # [B, S_all]
        query_seg = None if segments is None else segments[:, past:T]
        x = self._embed(input_ids, inputs_embeds, P, query_seg)  # [B, S_all, D]
        visible = self._visibility(B, S_all, K, past, P, prefix_mask, device) & key_mask[:, None, :]  # [B, S_all, K]
        pos = self.position(query_pos, key_pos, query_seg, segments)
        scores_bias = _scores_bias(visible, pos.bias, x.dtype)  # [B, H or 1, S_all, K]

        hidden_states, attentions = [], []
        for layer in self.layers:
            hidden_states.append(x)
            x, weights = layer(x, rotate=pos.rotate, scores_bias=scores_bias, cache=cache, start=past,
                               need_weights=output_attentions)
            attentions.append(weights)
        x = self.final_norm(x)
        hidden_states.append(x)
        if P:  # the prompt is internal: drop its positions from what we return
            x = x[:, P:]
            hidden_states = [h[:, P:] for h in hidden_states]
            attentions = [a[..., P:, P:] if a is not None else None for a in attentions]

        common = {"hidden_states": tuple(hidden_states) if output_hidden_states else None,
                  "attentions": tuple(attentions) if output_attentions else None}
        if head_spec is None:
            out = outputs.BaseModelOutputWithPast(last_hidden_state=x, past_key_values=cache if use_cache else None,
                                                  **common)
        else:
            fields = self.heads[head_spec.kind](x, input_ids=input_ids, labels=labels, logits_to_keep=logits_to_keep,
                                                start_positions=start_positions, end_positions=end_positions)
            if head_spec.returns_cache:
                fields["past_key_values"] = cache if use_cache else None
            out = head_spec.output_class(**fields, **common)
        return out if return_dict else out.to_tuple()

    # -- pieces of forward --------------------------------------------------------------------

    def _head_spec(self, head):
        if head is None:
            return next(iter(self.head_specs.values()), None)
        if head not in self.head_specs:
            raise InputError(f"head={head!r}: this model's heads are {list(self.head_specs) or 'none'}")
        return self.head_specs[head]

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.spec.vocab_size):
            raise InputError(f"input_ids must lie in [0, vocab_size={self.spec.vocab_size}), got values in "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")

    def _key_layout(self, B, S, T, K, past, attention_mask, position_ids, device):
        """For each of the K key slots: is it a real token ([B, K] bool), its position ([B, K])
        and its segment ([B, K], or None without segments). Positions count real tokens, so
        padding does not shift them; ``position_ids`` overrides this step's."""
        if attention_mask is None:
            key_mask = torch.ones(B, T, dtype=torch.bool, device=device)
        else:
            prompt = torch.ones(B, self.prompt_length, dtype=torch.bool, device=device)
            key_mask = torch.cat([prompt, attention_mask.to(device).bool()], dim=1)  # [B, T]
            if key_mask.shape != (B, T):
                raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                                 f"({B}, {T - self.prompt_length}): one entry per past and current token")
        key_pos = (key_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
        if position_ids is not None:
            position_ids = position_ids.to(device).expand(B, S) + self.prompt_length
            key_pos = torch.cat([key_pos[:, : T - S], position_ids], dim=1)
        segments = None
        if self.token_segment is not None:
            segments = torch.where(key_mask, self.token_segment, 0)  # [B, T]; prompt and pads: segment 0
            segments[:, : self.prompt_length] = 0
        if K > T:  # static cache: slots not written yet are masked out
            key_mask = nn.functional.pad(key_mask, (0, K - T), value=False)
            key_pos = nn.functional.pad(key_pos, (0, K - T))
            segments = nn.functional.pad(segments, (0, K - T)) if segments is not None else None
        return key_mask, key_pos, segments

    def _embed(self, input_ids, inputs_embeds, P, segment_ids):
        if P:
            B = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            prompt = self.prompt_ids.expand(B, P)  # [B, P]
            if input_ids is not None:
                input_ids = torch.cat([prompt, input_ids], dim=1)
            else:
                inputs_embeds = torch.cat([self.embedding.tokens(prompt).to(inputs_embeds.dtype), inputs_embeds], 1)
        return self.embedding(input_ids=input_ids, inputs_embeds=inputs_embeds, segment_ids=segment_ids)

    def _visibility(self, B, S, K, past, P, prefix_mask, device) -> torch.Tensor:
        """[B or 1, S, K]: may query i (at slot past+i) see key slot j, before padding."""
        q_idx = past + torch.arange(S, device=device)
        visible = (torch.arange(K, device=device)[None, :] <= q_idx[:, None])[None]  # [1, S, K] causal
        if prefix_mask is not None and not self.prefix_lm:
            raise InputError("prefix_mask is only meaningful for a spec with attention.mask: prefix_lm")
        if self.prefix_lm and past == 0:
            # The context (this first forward, or the part prefix_mask marks) attends both ways.
            context = torch.ones(B, S, dtype=torch.bool, device=device)
            if prefix_mask is not None:
                context[:, P:] = prefix_mask.to(device).bool()
            context_k = nn.functional.pad(context, (0, K - S))  # [B, K]
            visible = visible | (context[:, :, None] & context_k[:, None, :])
        return visible

    # -- conveniences -------------------------------------------------------------------------

    def generate(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """Greedy or sampled decoding with the KV cache; see ``archcomposer.generation.generate``."""
        from archcomposer.generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)

    def num_parameters(self) -> int:
        """Parameters, counting tied weights once."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"spec={self.spec.name!r}"

    def save_pretrained(self, path, *, format: str = "archcomposer", **kwargs):
        """Write a checkpoint directory: ours (``spec.yaml`` + safetensors) or, with
        ``format="hf"``, one transformers loads; see ``archcomposer.checkpoint.save_pretrained``."""
        from archcomposer.checkpoint import save_pretrained

        return save_pretrained(self, path, format=format, **kwargs)


def _scores_bias(visible: torch.Tensor, position_bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """What attention adds to its scaled scores: the position bias where ``visible`` [B, S, K],
    the dtype's most negative number elsewhere. Returns [B, H or 1, S, K] in ``dtype``."""
    min_value = torch.finfo(dtype).min
    bias_dtype = torch.promote_types(dtype, torch.float32)  # holds finfo(dtype).min, fp64 included
    scores_bias = torch.zeros(visible.shape, dtype=bias_dtype, device=visible.device)
    scores_bias = scores_bias.masked_fill(~visible, min_value)[:, None]  # [B, 1, S, K]
    if position_bias is not None:
        scores_bias = (scores_bias + position_bias).clamp(min=min_value)  # [B, H, S, K]
    return scores_bias.to(dtype)
