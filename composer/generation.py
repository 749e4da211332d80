"""Autoregressive decoding with the KV cache."""

from __future__ import annotations

import torch

from archcomposer.cache import DynamicCache, StaticCache
from archcomposer.errors import InputError


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | list[int] | None = None,
             pad_token_id: int | None = None, seed: int | None = None, cache: str = "dynamic",
             streamer=None) -> torch.Tensor:
    """Continue each row of ``input_ids`` by up to ``max_new_tokens`` tokens and return
    ``[B, S + new]`` (prompt then continuation), as transformers' ``generate`` does.

    Prompts of different lengths are left-padded, with ``attention_mask`` marking real tokens.
    A row stops at an EOS token (``eos_token_id``, else the spec's); rows that stopped are filled
    with ``pad_token_id`` (else the spec's, else the first EOS id). Sampling applies temperature,
    then top-k, then top-p, drawing from a generator seeded by ``seed``. ``cache="static"``
    preallocates the cache for the whole run.

    ``streamer`` receives the tokens as they are produced: an object with transformers' streamer
    protocol gets ``put(input_ids)`` with the prompt, ``put(token)`` with each step's ``[B]``
    tokens (pad for rows that stopped) and ``end()`` (``archcomposer.tokenizer.TextStreamer``,
    transformers' ``TextStreamer``); a plain callable gets each step's ``[B]`` tokens. Tokens
    reach it on the CPU."""
    spec = model.spec
    if "causal_lm" not in model.heads:
        raise InputError(f"generate needs a causal_lm head; spec {spec.name!r} has {list(model.heads) or 'none'}")
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise InputError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1 (or None for no top-k filtering), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    eos = spec.eos_token_ids if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) \
        else list(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else spec.pad_token_id if spec.pad_token_id is not None \
        else eos[0] if eos else 0
    B, S = input_ids.shape
    device = input_ids.device
    mask = torch.ones(B, S, dtype=torch.long, device=device) if attention_mask is None else attention_mask.long()
    protocol = hasattr(streamer, "put") and hasattr(streamer, "end")
    if streamer is not None and not protocol and not callable(streamer):
        raise InputError(f"streamer must have put() and end() or be callable, got {type(streamer).__name__}")
    put = streamer.put if protocol else streamer
    if cache == "dynamic":
        kv = DynamicCache()
    elif cache == "static":
        kv = StaticCache(max_length=model.num_prepended + S + max_new_tokens)
    else:
        raise InputError(f"cache must be 'dynamic' or 'static', got {cache!r}")
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    eos_tensor = torch.tensor(eos, device=device, dtype=torch.long)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens = []
    step_ids = input_ids
    if protocol:
        streamer.put(input_ids.cpu())
    for _ in range(max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, past_key_values=kv, use_cache=True,
                       logits_to_keep=1, head="causal_lm").logits[:, -1].float()  # [B, V]
        token = _sample(logits, temperature, top_k, top_p, generator) if do_sample else logits.argmax(-1)  # [B]
        token = torch.where(finished, pad, token)
        new_tokens.append(token)
        if streamer is not None:
            put(token.cpu())
        finished |= torch.isin(token, eos_tensor)
        if finished.all():
            break
        step_ids = token[:, None]
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
    if protocol:
        streamer.end()
    if not new_tokens:
        return input_ids
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)


def _sample(logits, temperature, top_k, top_p, generator) -> torch.Tensor:
    logits = logits / temperature  # [B, V]
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)  # [B, V] ascending
        drop_sorted = cumulative <= 1 - top_p
        drop_sorted[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
