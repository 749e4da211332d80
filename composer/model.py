"""The composed model: input embedding -> layers (each with its position scheme) -> final norm -> heads."""

from __future__ import annotations

import contextlib
import numbers

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from archcomposer import inputs, outputs
from archcomposer.blocks.heads import CausalLMHead
from archcomposer.blocks.mlp import MoE
from archcomposer.cache import DynamicCache, _Cache
from archcomposer.errors import CacheError, InputError
from archcomposer.spec import BuildContext, ModelSpecBase


def _run_layer(layer: nn.Module, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    return layer(x, **kwargs)


def _checkpointed_layer(layer: nn.Module, x: torch.Tensor, *, cache,
                        **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer whose activations backward recomputes, in training mode (transformers'
    ``GradientCheckpointingLayer``, torchtitan's per-layer checkpointing)."""
    if not layer.training:
        return layer(x, cache=cache, **kwargs)
    if cache is not None:
        raise CacheError("activation checkpointing recomputes each layer in backward, which would write the cache "
                         "twice: in training mode pass no past_key_values and use_cache=False (the default), or "
                         "call model.gradient_checkpointing_disable()")
    return checkpoint(layer, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _kept_router_logits(layer)),
                      cache=None, **kwargs)


@contextlib.contextmanager
def _kept_router_logits(layer: nn.Module):
    """Backward's recompute of ``layer`` leaves its MoE blocks' ``router_logits`` as the forward
    set them: a recomputed tensor left there would keep the layer's recomputed activations alive."""
    routers = [module for module in layer.modules() if isinstance(module, MoE)]
    kept = [router.router_logits for router in routers]
    try:
        yield
    finally:
        for router, logits in zip(routers, kept):
            router.router_logits = logits


class ComposedModel(nn.Module):
    """A transformer language model built from a spec (see ``archcomposer.build_model``).

    ``forward`` follows transformers' conventions for every argument. Differences worth knowing:
    without ``position_ids``, positions follow ``attention_mask`` (cumulative count of real
    tokens), so a left-padded row gets the logits it gets alone; the cache is off by default in
    training mode (as activation checkpointing needs); and an embedding kind with a prefix-LM mask
    treats the tokens of the first forward as bidirectional context (``prefix_mask`` narrows it)."""

    def __init__(self, spec: ModelSpecBase):
        super().__init__()
        self.spec = spec
        ctx = BuildContext(spec)
        self.embedding = spec.embedding.build(ctx)
        ctx = BuildContext(spec, embedding=self.embedding)
        # Layers whose position scheme (and the attention it serves) are equal share one module,
        # called once per forward. A sliding window changes the mask, not the scheme: layers that
        # differ only in it share the module, and each (scheme, window) gets its own scores bias.
        schemes: list[tuple] = []  # (position, attention), the first layer of each is where it is built
        first_layer: list[int] = []
        self.position_of: list[int] = []
        self.window_of: list[int | None] = []  # attention kinds without the field have no window
        for i, layer in enumerate(spec.layer_specs):
            window = getattr(layer.attention, "sliding_window", None)
            attention = layer.attention.model_copy(update={"sliding_window": None}) if window else layer.attention
            key = (layer.position, attention)
            if key not in schemes:
                schemes.append(key)
                first_layer.append(i)
            self.position_of.append(schemes.index(key))
            self.window_of.append(window)
        self.positions = nn.ModuleList(position.build(ctx.at(i)) for (position, _), i in zip(schemes, first_layer))
        self.bias_groups = list(dict.fromkeys(zip(self.position_of, self.window_of)))  # (scheme, window)
        self.layers = nn.ModuleList(spec.layer_specs[i].wiring.build(ctx.at(i)) for i in range(spec.num_layers))
        self.final_norm = spec.norm.build(ctx, dim=spec.hidden_size) if spec.final_norm else nn.Identity()
        self.heads = nn.ModuleDict({h.kind: h.build(ctx) for h in spec.heads})
        self.head_specs = {h.kind: h for h in spec.heads}
        self.tokenizer = None  # an archcomposer.Tokenizer: from_pretrained sets the checkpoint's
        # Mixture-of-experts layers: their router logits are returned and feed the load-balancing loss.
        self.routed = [i for i, s in enumerate(spec.layer_specs) if s.mlp.kind == "moe"]
        self.moe = spec.layer_specs[self.routed[0]].mlp if self.routed else None  # read once: not while tracing

    @property
    def num_prepended(self) -> int:
        """Tokens the embedding kind puts in front of the first forward (CPM-Ant's prompt); the
        cache holds them too."""
        return self.embedding.num_prepended

    @property
    def prefix_lm(self) -> bool:
        """Whether the first forward's tokens are bidirectional context (``prefix_mask`` applies)."""
        return self.embedding.prefix_lm

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=False,
                output_hidden_states=False, return_dict=True, logits_to_keep=0, *, start_positions=None,
                end_positions=None, prefix_mask=None, head: str | None = None, output_router_logits=False,
                _ids_in_range: bool = False):
        # Arguments are checked by shape and dtype (free); values only where a caller brings them:
        # ``generate`` checks its prompt once and passes ``_ids_in_range`` for each decoding step.
        head_spec = self._head_spec(head)
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            check_input_ids(input_ids, self.spec.vocab_size, values=not _ids_in_range)
        else:
            self._check_inputs_embeds(inputs_embeds)
        B, S = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if prefix_mask is not None:
            inputs.mask_tensor("prefix_mask", prefix_mask, (B, S), ", like the input")
        if position_ids is not None:
            _check_position_ids(position_ids, B, S)
        targets = self._targets(head_spec, B, S, labels=labels, start_positions=start_positions,
                                end_positions=end_positions)
        logits_to_keep = _checked_logits_to_keep(logits_to_keep, head_spec, S, has_labels="labels" in targets)
        if past_key_values is not None:
            if not isinstance(past_key_values, _Cache):
                raise CacheError(f"past_key_values must be an archcomposer cache, DynamicCache() or "
                                 f"StaticCache(max_length=...), got {inputs.describe(past_key_values)}; "
                                 f"transformers' caches and legacy tuples of (key, value) per layer are not read")
            past_key_values.check_fits(batch=B, num_layers=self.spec.num_layers, device=device)
        if use_cache is None:
            use_cache = not self.training and (head_spec is None or head_spec.returns_cache)
        cache = past_key_values if past_key_values is not None else (DynamicCache() if use_cache else None)
        first = cache is None or cache.empty
        # Tokens seen before this step: an int, or (a static cache after its first step) a 0-d tensor,
        # so that a compiled decoding step does not specialise on it.
        past = 0 if first else cache.seen(device)
        P = self.num_prepended if first else 0  # tokens the embedding kind prepends on this step
        T = past + P + S  # tokens seen, this step included
        windows = dict.fromkeys(self.window_of)
        slots = {w: cache.key_slots(T, P + S, w) if cache is not None else range(T) for w in windows}  # key slots
        K = max(r.stop for r in slots.values())  # key slots any layer sees (past T: unwritten static slots)

        key_mask = self._key_mask(attention_mask, B, S, T, K, device)  # [B, K]
        this_step = past + torch.arange(P + S, device=device)  # [P+S]: the slots of this step's tokens
        query_mask = key_mask[:, this_step]  # [B, P+S]
        query_pos = self._positions(key_mask, position_ids, this_step, B, S)  # [B, P+S]
        embedded = self.embedding(input_ids=input_ids, inputs_embeds=inputs_embeds, positions=query_pos,
                                  token_mask=query_mask, first=first, prefix_mask=prefix_mask)
        x, query_seg = embedded.x, embedded.segments  # [B, P+S, D], [B, P+S] or None
        key_pos, key_seg = query_pos, query_seg
        if cache is not None:  # the cached keys keep the positions (and segments) they were written with
            key_pos = cache.update_tokens("position", query_pos, past)  # [B, K]
            key_seg = cache.update_tokens("segment", query_seg, past) if query_seg is not None else None
        visible = {w: self._visibility(embedded.context, past, P + S, r, w, device)
                   & key_mask[:, None, r.start:r.stop] for w, r in slots.items()}  # each [B, P+S, len(r)]
        encodings = [position(query_pos, key_pos, query_seg, key_seg) for position in self.positions]
        # A bias column belongs to its key alone, so a window's bias is its slots' columns.
        biases = {(j, w): _scores_bias(visible[w], _columns(encodings[j].bias, slots[w]), x.dtype)
                  for j, w in self.bias_groups}  # each [B, H or 1, P+S, len(slots[w])]

        hidden_states, attentions = [], []
        for layer, j, w in zip(self.layers, self.position_of, self.window_of):
            hidden_states.append(x)
            x, weights = self._run_layer(layer, x, rotate=encodings[j].rotate, scores_bias=biases[j, w], cache=cache,
                                         start=past, need_weights=output_attentions)
            attentions.append(weights)
        x = self.final_norm(x)
        hidden_states.append(x)
        if P:  # prepended tokens are the embedding kind's own: drop their positions from what we return
            x = x[:, P:]
            hidden_states = [h[:, P:] for h in hidden_states]
            attentions = [a[..., P:, P:] if a is not None else None for a in attentions]

        common = {"hidden_states": tuple(hidden_states) if output_hidden_states else None,
                  "attentions": tuple(attentions) if output_attentions else None}
        if head_spec is None:
            fields = {"last_hidden_state": x, "past_key_values": cache if use_cache else None}
            output_class = outputs.BaseModelOutputWithPast
        else:
            fields = self.heads[head_spec.kind](x, input_ids=input_ids, logits_to_keep=logits_to_keep, **targets)
            if head_spec.returns_cache:
                fields["past_key_values"] = cache if use_cache else None
            output_class = head_spec.output_class
        if self.routed and output_class in outputs.MOE_OUTPUTS:
            output_class = outputs.MOE_OUTPUTS[output_class]
            if output_router_logits:
                token_mask = query_mask[:, P:] if attention_mask is not None else None  # [B, S]
                aux = output_class is outputs.MoeCausalLMOutputWithPast
                fields.update(self._router_outputs(fields, token_mask, aux=aux, batch=B, prepended=P))
        out = output_class(**fields, **common)
        return out if return_dict else out.to_tuple()

    def _router_outputs(self, fields: dict, token_mask: torch.Tensor | None, *, aux: bool, batch: int,
                        prepended: int) -> dict:
        """``router_logits`` (one [B*S, E] per MoE layer, the input tokens' rows) and, for a causal
        LM, the load-balancing ``aux_loss``, added to the loss times the spec's ``aux_loss_coef``
        (transformers' MoE models; none where that is None, as in DeepSeek's)."""
        router_logits = tuple(self.layers[i].mlp.router_logits.unflatten(0, (batch, -1))[:, prepended:].flatten(0, 1)
                              for i in self.routed)  # each [B*S, E]
        moe = self.moe
        if not aux or moe.aux_loss_coef is None:
            return {"router_logits": router_logits}
        aux_loss = load_balancing_loss(router_logits, num_experts=moe.num_experts, top_k=moe.top_k,
                                       token_mask=token_mask)
        loss = fields.get("loss")
        if loss is not None:
            loss = loss + moe.aux_loss_coef * aux_loss.to(loss.device)
        return {"router_logits": router_logits, "aux_loss": aux_loss, "loss": loss}

    # -- pieces of forward --------------------------------------------------------------------

    def _head_spec(self, head):
        if head is None:
            return next(iter(self.head_specs.values()), None)
        if not isinstance(head, str) or head not in self.head_specs:
            raise InputError(f"head={head!r}: this model's heads are {list(self.head_specs) or 'none'}")
        return self.head_specs[head]

    def _check_inputs_embeds(self, inputs_embeds) -> None:
        D = self.spec.hidden_size
        inputs.tensor("inputs_embeds", inputs_embeds, f"[batch, seq, hidden_size={D}]")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != D:
            raise InputError(f"inputs_embeds must be [batch, seq, hidden_size={D}], "
                             f"got shape {tuple(inputs_embeds.shape)}")
        dtype = self.embedding.tokens.weight.dtype
        if inputs_embeds.dtype != dtype and not torch.is_autocast_enabled(inputs_embeds.device.type):
            raise InputError(f"inputs_embeds has dtype {inputs_embeds.dtype}; expected {dtype}, the model's "
                             f"(convert with inputs_embeds.to({dtype}))")

    def _targets(self, head_spec, B, S, **given) -> dict[str, torch.Tensor]:
        """The label arguments given (``labels``, ``start_positions``...), as the head takes them."""
        given = {name: value for name, value in given.items() if value is not None}
        if not given:
            return given
        if head_spec is None:
            raise InputError(f"{' and '.join(given)} score a head's output; this model has no head")
        return head_spec.check_labels(self.spec, given, batch=B, seq=S)

    def _key_mask(self, attention_mask, B, S, T, K, device) -> torch.Tensor:
        """[B, K] bool: which key slots hold real tokens (not padding). Prepended tokens are real;
        so are the slots after this step's (a static cache's unwritten ones), which causality hides.

        ``attention_mask`` has a column per input token seen, this step's included; a static cache
        also takes one column per slot after its prompt (a width that stays the same from step to
        step, which a compiled decoding step needs; columns after this step's tokens are not read)."""
        if attention_mask is None:
            return torch.ones(B, K, dtype=torch.bool, device=device)
        columns = T - self.num_prepended  # the input tokens so far
        every_slot = K - self.num_prepended  # more than that only where a static cache has slots after this step
        width = attention_mask.shape[-1] if isinstance(attention_mask, torch.Tensor) else None
        if width == every_slot:
            columns = width
        elif isinstance(T, torch.Tensor) and not torch.compiler.is_compiling():  # a static cache's position
            columns = int(columns)  # a host sync, in eager calls only
        elif isinstance(T, torch.Tensor):  # traced: the widths a step may have, not the one it needs
            columns = width if width is not None and width < every_slot else every_slot
        per_slot = f" (or {every_slot}: one per slot of the static cache)" if every_slot != columns else ""
        inputs.mask_tensor("attention_mask", attention_mask, (B, columns),
                           f"{per_slot}: one entry per token, the {columns - S} in past_key_values and the {S} "
                           f"of this step (1: a token, 0: padding)")
        prepended = torch.ones(B, self.num_prepended, dtype=torch.bool, device=device)
        key_mask = torch.cat([prepended, attention_mask.to(device).bool()], dim=1)  # [B, T or K]
        return nn.functional.pad(key_mask, (0, K - key_mask.shape[1]), value=True)  # [B, K]

    def _positions(self, key_mask, position_ids, this_step, B, S) -> torch.Tensor:
        """[B, P+S]: the positions of this step's tokens (at key slots ``this_step``). They count
        real tokens, so padding does not shift them; ``position_ids`` (for the input tokens, after
        any prepended ones) overrides that."""
        positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, this_step]  # [B, P+S]
        if position_ids is not None:
            given = position_ids.to(key_mask.device).long().expand(B, S) + self.num_prepended  # [B, S]
            positions = torch.cat([positions[:, : positions.shape[1] - S], given], dim=1)
        return positions

    @staticmethod
    def _visibility(context, past, Q, slots: range, window, device) -> torch.Tensor:
        """[B or 1, Q, K]: may query i (at slot past+i) see key slot ``slots[j]``, before padding.
        Causal, except that prefix-LM context tokens of this step also see each other both ways;
        with a ``window``, no key ``window`` or more slots before the query is seen (transformers'
        ``sliding_window_overlay``, on top of either)."""
        q_idx = past + torch.arange(Q, device=device)[:, None]  # [Q, 1]
        k_idx = torch.arange(slots.start, slots.stop, device=device)[None, :]  # [1, K]
        visible = (k_idx <= q_idx)[None]  # [1, Q, K]
        if context is not None:
            context_k = nn.functional.pad(context, (past - slots.start, slots.stop - past - Q))  # [B, K]
            visible = visible | (context[:, :, None] & context_k[:, None, :])
        if window is not None:
            visible = visible & (k_idx > q_idx - window)[None]
        return visible

    # -- training memory ---------------------------------------------------------------------

    _run_layer = staticmethod(_run_layer)  # how forward calls each layer: gradient_checkpointing_enable swaps it

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing (transformers' name): in training mode each layer keeps only its
        input, and backward recomputes the layer's forward (``torch.utils.checkpoint``, non-reentrant,
        the RNG state kept so dropout draws the same). Gradients are unchanged; the step costs one
        more forward of the layers. Eval mode runs as before. A cache cannot be written meanwhile."""
        self._run_layer = _checkpointed_layer

    def gradient_checkpointing_disable(self) -> None:
        """Layers keep their activations for backward again (the default)."""
        self._run_layer = _run_layer

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self._run_layer is _checkpointed_layer

    # transformers 5 names them so too (its gradient_checkpointing_* are deprecated aliases)
    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable
    is_activation_checkpointing = is_gradient_checkpointing

    def chunked_loss_enable(self, chunk_size: int = 1024) -> None:
        """The causal-LM loss over ``chunk_size`` positions at a time: with labels, no [B, S, V]
        logits are kept (each chunk's are recomputed in backward) and the output's ``logits`` is None."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size <= 0:
            raise InputError(f"chunked_loss_enable(chunk_size=...) takes a number of positions, an int > 0 "
                             f"(e.g. chunk_size=1024), got {inputs.describe(chunk_size)}")
        for head in self._causal_lm_heads():
            head.chunk_size = int(chunk_size)

    def chunked_loss_disable(self) -> None:
        """The causal-LM loss from the full logits again (the default); ``logits`` is returned."""
        for head in self._causal_lm_heads():
            head.chunk_size = None

    def _causal_lm_heads(self) -> list[CausalLMHead]:
        heads = [head for head in self.heads.values() if isinstance(head, CausalLMHead)]
        if not heads:
            raise InputError(f"the chunked loss is the causal-LM head's; this model's heads are "
                             f"{list(self.head_specs) or 'none'}")
        return heads

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


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], *, num_experts: int, top_k: int,
                        token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer's load-balancing loss over every MoE layer's router logits [N, E]
    (transformers' ``load_balancing_loss_func``): num_experts x sum over experts of (share of
    top-k assignments) x (mean router probability), padding (``token_mask`` [B, S] false) left out."""
    device = router_logits[0].device
    mask = torch.ones(router_logits[0].shape[0], device=device) if token_mask is None \
        else token_mask.reshape(-1).to(device=device, dtype=torch.float32)  # [N]
    assigned = torch.zeros(num_experts, dtype=torch.float32, device=device)  # [E]
    probability = torch.zeros(num_experts, dtype=torch.float32, device=device)  # [E]
    for logits in router_logits:
        probs = torch.softmax(logits.to(device), dim=-1)  # [N, E]
        chosen = torch.topk(probs, top_k, dim=-1).indices  # [N, k]
        assigned = assigned.scatter_add(0, chosen.reshape(-1), mask.repeat_interleave(top_k))
        probability = probability + (probs.float() * mask[:, None]).sum(dim=0)
    rows = mask.sum() * len(router_logits)
    return num_experts * torch.sum((assigned / rows) * (probability / rows))

def check_input_ids(input_ids, vocab_size: int, *, values: bool = True) -> None:
    """Refuse ``input_ids`` that are not [batch, seq] token ids; with ``values``, also ids outside
    the vocabulary (a host sync)."""
    inputs.index_tensor("input_ids", input_ids, "token ids [batch, seq]")
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if values and input_ids.numel():
        inputs.in_range("input_ids", input_ids, vocab_size, "vocab_size")


def _check_position_ids(position_ids, B: int, S: int) -> None:
    """Refuse ``position_ids`` other than integer positions of the S input tokens of each row:
    [B, S], or [1, S] or [S] for every row."""
    inputs.index_tensor("position_ids", position_ids, f"positions [{B}, {S}]")
    if tuple(position_ids.shape) not in ((B, S), (1, S), (S,)):
        shared = f" (or (1, {S}): the same for every row)" if B > 1 else ""
        raise InputError(f"position_ids has shape {tuple(position_ids.shape)}; expected ({B}, {S}): one position "
                         f"per input token{shared}")


def _checked_logits_to_keep(logits_to_keep, head_spec, S: int, has_labels: bool) -> int | torch.Tensor:
    """``logits_to_keep``: an int N >= 0 (the last N positions; 0 or N >= S: all) or a 1-D tensor of
    positions in [-S, S), for a head with per-position logits. Reads a tensor's values (a host sync)."""
    if isinstance(logits_to_keep, torch.Tensor):
        inputs.index_tensor("logits_to_keep", logits_to_keep, "a 1-D tensor of positions")
        if logits_to_keep.dim() != 1:
            raise InputError(f"logits_to_keep as a tensor must be 1-D positions, got shape "
                             f"{tuple(logits_to_keep.shape)}")
        if logits_to_keep.numel():
            inputs.in_range("logits_to_keep", logits_to_keep, S, "the input's length", low=-S)
    elif isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, numbers.Integral) or logits_to_keep < 0:
        raise InputError(f"logits_to_keep must be an int >= 0 (keep the last N positions; 0: all) or a 1-D "
                         f"tensor of positions, got {inputs.describe(logits_to_keep)}")
    else:
        logits_to_keep = int(logits_to_keep)
    if isinstance(logits_to_keep, torch.Tensor) or logits_to_keep:
        if head_spec is None or not head_spec.keeps_positions:
            which = f"head {head_spec.kind!r} does not select them" if head_spec else "this model has no head"
            raise InputError(f"logits_to_keep selects the positions a head scores; {which}: leave logits_to_keep at 0")
        if has_labels:
            raise InputError("labels need the logits of every position: leave logits_to_keep at 0")
    return logits_to_keep


def _columns(bias: torch.Tensor | None, slots: range) -> torch.Tensor | None:
    """The key columns ``slots`` of a position bias [B, H, Q or 1, K]."""
    return None if bias is None else bias[..., slots.start:slots.stop]


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
