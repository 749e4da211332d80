"""Key/value caches. A cache is handed to every attention layer, which calls
``update(layer_idx, k, v, start, window=...)`` with this step's keys and values and gets back the
keys it attends to: those the cache kept, then this step's. (Multi-head latent attention stores its
latent [B, 1, S, R] as keys and its shared rotary key [B, 1, S, Dr] as values, as transformers does.) ``key_slots`` says which cache slots
those are, so the model builds the mask (and slices position records) to match. A layer with a
sliding ``window`` only ever needs the ``window - 1`` tokens before each query; the dynamic cache
keeps only those for it.

The model also keeps, per cached token, what position schemes need of the keys (their position
and segment) through ``update_tokens``: a bias computed at a later step must see the positions the
keys had when they were written (``position_ids`` given then), not ones rebuilt from the mask.
These records cover every token seen, windowed layers or not.

``seen(device)`` is where this step's tokens go: a Python int for the dynamic cache (whose shapes
change every step anyway) and a 0-d tensor for the static cache, which writes with ``index_copy_``
at tensor positions (transformers' ``cache_position``, gpt-fast's ``input_pos``), so a compiled
decoding step does not specialise on the length and never recompiles."""

from abc import ABC, abstractmethod

import torch
import torch.utils._pytree as pytree

from archcomposer.errors import CacheError


class _Cache(ABC):
    """Per-layer key and value tensors, per-token records, and what every cache does with them."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # per layer, k: [B, Hkv, S, Dh]
        self.values: list[torch.Tensor] = []
        self.tokens: dict[str, torch.Tensor] = {}  # name -> [B, S] (position, segment)

    @property
    @abstractmethod
    def empty(self) -> bool:
        """Whether no token was written yet (a Python bool: the first forward differs)."""

    @abstractmethod
    def seen(self, device: torch.device) -> int | torch.Tensor:
        """Tokens seen so far, where this step's go: an int, or a 0-d int64 tensor on ``device``."""

    @abstractmethod
    def key_slots(self, total: int, new: int, window: int | None = None) -> range:
        """The slots (token indices, from 0) of the keys ``update`` returns to a layer with this
        ``window`` at a step that brings the cache to ``total`` tokens, ``new`` of them this step's."""

    def check_fits(self, *, batch: int, num_layers: int, device: torch.device) -> None:
        """Refuse a step of ``batch`` rows on ``device`` by a model of ``num_layers`` layers that
        this cache was not filled for. Reads shapes only (no host sync); ``update`` checks each
        layer's heads, head size and dtype."""
        if self.keys and len(self.keys) != num_layers:
            raise CacheError(f"past_key_values holds {len(self.keys)} layers but this model has {num_layers}: "
                             f"a cache belongs to the model that filled it; pass a new DynamicCache()")
        filled = self.keys[0] if self.keys else next(iter(self.tokens.values()), None)
        if filled is not None and filled.shape[0] != batch:
            raise CacheError(f"past_key_values holds {filled.shape[0]} batch rows but the input has {batch}")
        if filled is not None and filled.device != device:
            raise CacheError(f"past_key_values is on {filled.device} but the input is on {device}")

    def _check_layer(self, layer_idx: int, k: torch.Tensor) -> None:
        """Refuse keys ``k`` [B, Hkv, s, Dh] unlike those this cache holds for the layer."""
        held = self.keys[layer_idx]  # [B, Hkv, S, Dh]
        if (held.shape[:2], held.shape[-1], held.dtype, held.device) != (k.shape[:2], k.shape[-1], k.dtype, k.device):
            raise CacheError(f"past_key_values holds keys of batch {held.shape[0]}, {held.shape[1]} heads of size "
                             f"{held.shape[-1]}, {held.dtype} on {held.device} at layer {layer_idx}, but this model "
                             f"gives batch {k.shape[0]}, {k.shape[1]} heads of size {k.shape[-1]}, {k.dtype} on "
                             f"{k.device}: a cache belongs to the model (and dtype) that filled it")

    def _check_new_record(self, name: str) -> None:
        """Refuse to start a record of ``name`` after tokens were seen without it."""
        if not self.empty:
            raise CacheError(f"past_key_values holds {self.get_seq_length()} tokens but no {name} for them: it was "
                             f"filled by a model whose position scheme does not use {name}s; a cache belongs to the "
                             f"model that filled it")

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows in ``index`` (beam search, dropping finished rows)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.tokens = {name: t.index_select(0, index) for name, t in self.tokens.items()}

    def __len__(self) -> int:
        return len(self.keys)


class DynamicCache(_Cache):
    """Grows by concatenation. A layer without a window keeps every token seen; a layer with
    one keeps the last ``window - 1`` (what the next step can still see) and its storage never
    exceeds ``window`` tokens."""

    def __init__(self):
        super().__init__()
        self.length = 0  # tokens seen (a windowed layer keeps fewer)

    def get_seq_length(self) -> int:
        return self.length

    @property
    def empty(self) -> bool:
        return self.length == 0

    def seen(self, device: torch.device) -> int:
        return self.length

    def key_slots(self, total: int, new: int, window: int | None = None) -> range:
        past = total - new
        kept = past if window is None else min(past, window - 1)
        return range(past - kept, total)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, start: int, window: int | None = None):
        """Add this step's ``k``, ``v`` [B, Hkv, s, Dh] to layer ``layer_idx``; returns the kept
        keys and values followed by these, [B, Hkv, K, Dh] with K = ``len(key_slots(...))``."""
        if layer_idx == len(self.keys):
            keys, values = _standalone(k), _standalone(v)
            self.keys.append(keys)
            self.values.append(values)
        else:
            self._check_layer(layer_idx, k)
            keys = torch.cat([self.keys[layer_idx], k], dim=-2)  # [B, Hkv, K, Dh]
            values = torch.cat([self.values[layer_idx], v], dim=-2)
        if layer_idx == 0:
            self.length += k.shape[-2]
        kept_keys, kept_values = keys, values
        if window is not None:
            drop = max(0, keys.shape[-2] - (window - 1))
            kept_keys, kept_values = keys[:, :, drop:], values[:, :, drop:]  # [B, Hkv, <= window-1, Dh]
            if drop > 1:  # a view would hold on to all of this step's storage (a whole prompt)
                kept_keys, kept_values = kept_keys.clone(), kept_values.clone()
        self.keys[layer_idx], self.values[layer_idx] = kept_keys, kept_values
        return keys, values

    def update_tokens(self, name: str, values: torch.Tensor, start: int) -> torch.Tensor:
        """Record ``values`` [B, s] for the tokens at ``start...``; returns the record of every token seen."""
        past = self.tokens.get(name)
        if past is None:
            self._check_new_record(name)
        self.tokens[name] = values if past is None else torch.cat([past[:, :start], values], dim=1)  # [B, S+s]
        return self.tokens[name]

    def __repr__(self) -> str:
        return f"DynamicCache(layers={len(self)}, seq_length={self.get_seq_length()})"


class StaticCache(_Cache):
    """Preallocated to ``max_length`` tokens, so decoding steps keep fixed shapes (as gpt-fast).
    Buffers are allocated on the first update, with that update's batch, heads, dtype and device.
    Attention sees all ``max_length`` slots; slots not written yet are masked out. A windowed
    layer keeps every slot too (no ring buffer): the mask hides the keys outside its window."""

    def __init__(self, max_length: int):
        if max_length < 1:
            raise CacheError(f"StaticCache max_length must be at least 1, got {max_length}")
        super().__init__()  # per layer, k: [B, Hkv, max_length, Dh]
        self.max_length = max_length
        self.position = torch.zeros((), dtype=torch.long)  # tokens written, where the next step's go
        self.written = False

    def get_seq_length(self) -> int:
        return int(self.position)  # a host sync

    @property
    def empty(self) -> bool:
        return not self.written

    def seen(self, device: torch.device) -> torch.Tensor:
        if self.position.device != device:
            self.position = self.position.to(device)
        return self.position

    def key_slots(self, total: int | torch.Tensor, new: int, window: int | None = None) -> range:
        # Reads the position (a host sync) in eager calls only; a compiled step past the end fails in index_copy_.
        if not torch.compiler.is_compiling() and int(total) > self.max_length:
            raise CacheError(f"StaticCache holds {self.max_length} tokens but this step needs {int(total)}; "
                             f"create it with a larger max_length")
        return range(self.max_length)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor,
               window: int | None = None):
        """Write this step's ``k``, ``v`` [B, Hkv, s, Dh] at slots ``start...`` (an int or a 0-d
        tensor); returns all ``max_length`` slots, [B, Hkv, max_length, Dh], whatever the ``window``."""
        if layer_idx == len(self.keys):
            self.keys.append(self._zeros(k, (*k.shape[:2], self.max_length, k.shape[-1]), f"layer {layer_idx}'s keys"))
            self.values.append(self._zeros(v, (*v.shape[:2], self.max_length, v.shape[-1]),  # widths may differ (MLA)
                                           f"layer {layer_idx}'s values"))
        else:
            self._check_layer(layer_idx, k)
        slots = self._slots(start, k.shape[-2], k.device)  # [s]
        self.keys[layer_idx].index_copy_(2, slots, k)
        self.values[layer_idx].index_copy_(2, slots, v)
        if layer_idx == 0:  # a new tensor: the step's own ``start`` keeps its value for the other layers
            self.position = torch.as_tensor(start, device=k.device) + k.shape[-2]
            self.written = True
        return self.keys[layer_idx], self.values[layer_idx]

    def update_tokens(self, name: str, values: torch.Tensor, start: int) -> torch.Tensor:
        """Record ``values`` [B, s] for the tokens at ``start...``; returns all ``max_length`` slots
        (zeros where nothing was written)."""
        if name not in self.tokens:
            self._check_new_record(name)
            self.tokens[name] = self._zeros(values, (values.shape[0], self.max_length), f"its {name} record")  # [B, L]
        self.tokens[name].index_copy_(1, self._slots(start, values.shape[1], values.device), values)
        return self.tokens[name]

    @staticmethod
    def _slots(start: int | torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
        return start + torch.arange(count, device=device)  # [count]

    def _zeros(self, like: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
        try:
            return like.new_zeros(shape)
        except RuntimeError as exc:  # torch's out-of-memory errors, on every device
            gib = like.element_size() * torch.Size(shape).numel() / 2**30
            raise CacheError(f"StaticCache(max_length={self.max_length}) cannot allocate {what}, {list(shape)} "
                             f"{like.dtype} ({gib:.3g} GiB); create it with a smaller max_length") from exc

    def __repr__(self) -> str:
        return f"StaticCache(layers={len(self)}, seq_length={self.get_seq_length()}, max_length={self.max_length})"


# Caches are pytree nodes (their tensors the leaves), so torch.export can return one and
# torch.utils._pytree.tree_map reaches its tensors.
def _flatten_dynamic(cache: DynamicCache):
    return [cache.keys, cache.values, cache.tokens], cache.length


def _unflatten_dynamic(children, length: int) -> DynamicCache:
    cache = DynamicCache()
    cache.keys, cache.values, cache.tokens = (type(child)(child) for child in children)
    cache.length = length
    return cache


def _flatten_static(cache: StaticCache):
    return [cache.keys, cache.values, cache.tokens, cache.position], (cache.max_length, cache.written)


def _unflatten_static(children, context: tuple[int, bool]) -> StaticCache:
    cache = StaticCache(max_length=context[0])
    keys, values, tokens, cache.position = children
    cache.keys, cache.values, cache.tokens, cache.written = list(keys), list(values), dict(tokens), context[1]
    return cache


pytree.register_pytree_node(DynamicCache, _flatten_dynamic, _unflatten_dynamic,
                            serialized_type_name=f"{__name__}.DynamicCache")
pytree.register_pytree_node(StaticCache, _flatten_static, _unflatten_static,
                            serialized_type_name=f"{__name__}.StaticCache")


def _standalone(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it where it is a view of a larger tensor (a fused QKV projection's k and
    v are views of the whole q, k, v output, which the cache would otherwise keep alive)."""
    if torch.compiler.is_compiling():  # storages are not traced; a compiled graph's outputs are its own
        return t.contiguous()
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.contiguous() if not t.is_contiguous() else t.clone()
    return t
