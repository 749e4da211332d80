"""Autoregressive decoding with the KV cache."""

from __future__ import annotations

import numbers

import torch

from archcomposer import inputs
from archcomposer.cache import DynamicCache, StaticCache
from archcomposer.errors import InputError
from archcomposer.model import check_input_ids


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | list[int] | None = None,
             pad_token_id: int | None = None, seed: int | None = None, cache: str = "dynamic",
             compile: bool = False, streamer=None) -> torch.Tensor:
    """Continue each row of ``input_ids`` by up to ``max_new_tokens`` tokens and return
    ``[B, S + new]`` (prompt then continuation), as transformers' ``generate`` does.

    Prompts of different lengths are left-padded, with ``attention_mask`` marking real tokens.
    A row stops at an EOS token (``eos_token_id``, else the spec's); rows that stopped are filled
    with ``pad_token_id`` (else the spec's, else the first EOS id). Sampling applies temperature,
    then top-k, then top-p, drawing from a generator seeded by ``seed``. ``cache="static"``
    preallocates the cache for the whole run; with it, ``compile=True`` runs each decoding step
    (after the prompt's) through ``torch.compile(fullgraph=True)``: one compiled step, reused by every
    step and every later call (the cache writes at a tensor position, so nothing recompiles).

    ``streamer`` receives the tokens as they are produced: an object with transformers' streamer
    protocol gets ``put(input_ids)`` with the prompt, ``put(token)`` with each step's ``[B]``
    tokens (pad for rows that stopped) and ``end()`` (``archcomposer.tokenizer.TextStreamer``,
    transformers' ``TextStreamer``); a plain callable gets each step's ``[B]`` tokens. Tokens
    reach it on the CPU."""
    spec = model.spec
    if "causal_lm" not in model.heads:
        raise InputError(f"generate needs a causal_lm head; spec {spec.name!r} has {list(model.heads) or 'none'}")
    # The prompt's values are checked once, here: each step feeds back a token sampled from the
    # vocabulary (or the checked pad id), so forward does not read them again (no host sync per step).
    check_input_ids(input_ids, spec.vocab_size)
    B, S = input_ids.shape
    if not B or not S:
        raise InputError(f"generate continues prompts of at least one token; input_ids has shape {(B, S)}")
    if attention_mask is not None:
        inputs.mask_tensor("attention_mask", attention_mask, (B, S), ", like input_ids (1: a token, 0: left padding)")
    max_new_tokens = inputs.count("max_new_tokens", max_new_tokens, 0)
    if not isinstance(do_sample, bool):
        raise InputError(f"do_sample must be True or False, got {inputs.describe(do_sample)}")
    temperature = inputs.number("temperature", temperature, low=0, low_inclusive=True)
    if do_sample and temperature == 0:
        raise InputError(f"temperature must be > 0 when sampling, got {temperature}")
    top_k = None if top_k is None else inputs.count("top_k", top_k, 1)
    if top_p is not None:
        top_p = inputs.number("top_p", top_p, low=0, low_inclusive=False, high=1, high_inclusive=True)
    seed = None if seed is None else inputs.count("seed", seed, 0)
    if eos_token_id is None:
        eos = _token_ids("the spec's eos_token_id", spec.eos_token_ids, spec.vocab_size)
    else:
        eos = _token_ids("eos_token_id", eos_token_id, spec.vocab_size)
    if pad_token_id is not None:  # rows that stopped are fed it as input
        [pad_token_id] = _token_ids("pad_token_id", pad_token_id, spec.vocab_size, one=True)
    pad = pad_token_id if pad_token_id is not None else spec.pad_token_id if spec.pad_token_id is not None \
        else eos[0] if eos else 0
    device = input_ids.device
    mask = torch.ones(B, S, dtype=torch.bool, device=device) if attention_mask is None \
        else attention_mask.to(device).bool()  # [B, S], nonzero: a token (as forward reads it)
    protocol = hasattr(streamer, "put") and hasattr(streamer, "end")
    if streamer is not None and not protocol and not callable(streamer):
        raise InputError(f"streamer must have put() and end() or be callable, got {type(streamer).__name__}")
    put = streamer.put if protocol else streamer
    if not isinstance(compile, bool):
        raise InputError(f"compile must be True or False, got {inputs.describe(compile)}")
    if compile and cache != "static":
        raise InputError(f"compile=True needs cache='static' (fixed shapes from step to step), got cache={cache!r}")
    if cache == "dynamic":
        kv = DynamicCache()
    elif cache == "static":
        slots = model.num_prepended + S + max_new_tokens
        if slots > spec.max_positions:  # also keeps a huge max_new_tokens from allocating anything
            raise InputError(f"cache='static' preallocates a slot per token: {slots - max_new_tokens} of the prompt "
                             f"+ max_new_tokens={max_new_tokens} = {slots}, more than the {spec.max_positions} "
                             f"positions this model supports (max_positions); lower max_new_tokens or use "
                             f"cache='dynamic'")
        kv = StaticCache(max_length=slots)
        # One column per slot, the same width at every step (a compiled step keeps its shapes);
        # the columns after each step's token are not read.
        mask = torch.cat([mask, torch.ones(B, max_new_tokens, dtype=mask.dtype, device=device)], dim=1)
    else:
        raise InputError(f"cache must be 'dynamic' or 'static', got {inputs.describe(cache)}")
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    eos_tensor = torch.tensor(eos, device=device, dtype=torch.long)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens = []
    step_ids = input_ids
    if protocol:
        streamer.put(input_ids.cpu())
    for i in range(max_new_tokens):
        step = _compiled_step() if compile and i else _step
        logits = step(model, step_ids, mask, kv).float()  # [B, V]
        token = _sample(logits, temperature, top_k, top_p, generator) if do_sample else logits.argmax(-1)  # [B]
        token = torch.where(finished, pad, token)
        new_tokens.append(token)
        if streamer is not None:
            put(token.cpu())
        finished |= torch.isin(token, eos_tensor)
        if finished.all():
            break
        step_ids = token[:, None]
        if cache == "dynamic":
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
    if protocol:
        streamer.end()
    if not new_tokens:
        return input_ids
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)


def _step(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache) -> torch.Tensor:
    """One decoding step: the last position's logits [B, V]. The ids were checked (the prompt) or
    sampled from the vocabulary, so forward does not read them again (no host sync per step)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                 logits_to_keep=1, head="causal_lm", _ids_in_range=True).logits[:, -1]


_COMPILED_STEP = None


def _compiled_step():
    """``_step`` through ``torch.compile(fullgraph=True)``, made once per process: its compiled
    code is kept (per model, guarded by dynamo) and reused by every later step and call."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_step, fullgraph=True)
    return _COMPILED_STEP


def _token_ids(name: str, given, vocab_size: int, one: bool = False) -> list[int]:
    """``given`` (a token id, or unless ``one`` a list or tuple of them) as a list of ints, each
    in [0, vocab_size)."""
    ids = [given] if isinstance(given, numbers.Integral) else given if isinstance(given, (list, tuple)) and not one \
        else None
    if ids is None or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) and 0 <= i < vocab_size
                              for i in ids):
        expected = "a token id" if one else "a token id, or a list of them,"
        raise InputError(f"{name} must be {expected} in [0, vocab_size={vocab_size}), got {inputs.describe(given)}")
    return [int(i) for i in ids]


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
