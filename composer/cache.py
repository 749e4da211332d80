"""Key/value caches. A cache is handed to every attention layer, which calls
``update(layer_idx, k, v, start)`` with this step's keys and values and gets back all of them.
The model also keeps, per cached token, what position schemes need of the keys (their position
and segment) through ``update_tokens``: a bias computed at a later step must see the positions the
keys had when they were written (``position_ids`` given then), not ones rebuilt from the mask."""

import torch

from archcomposer.errors import CacheError


class _Cache:
    """Per-layer key and value tensors, per-token records, and what every cache does with them."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # per layer, k: [B, Hkv, S, Dh]
        self.values: list[torch.Tensor] = []
        self.tokens: dict[str, torch.Tensor] = {}  # name -> [B, S] (position, segment)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows in ``index`` (beam search, dropping finished rows)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.tokens = {name: t.index_select(0, index) for name, t in self.tokens.items()}

    def __len__(self) -> int:
        return len(self.keys)


class DynamicCache(_Cache):
    """Grows by concatenation; holds exactly the tokens seen so far."""

    def get_seq_length(self) -> int:
        return self.keys[0].shape[-2] if self.keys else 0

    def key_length(self, total: int) -> int:
        """How many key slots attention sees when the cache holds ``total`` tokens."""
        return total

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, start: int):
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k], dim=-2)  # [B, Hkv, S+s, Dh]
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def update_tokens(self, name: str, values: torch.Tensor, start: int) -> torch.Tensor:
        """Record ``values`` [B, s] for the tokens at ``start...``; returns the record of every key slot."""
        past = self.tokens.get(name)
        self.tokens[name] = values if past is None else torch.cat([past[:, :start], values], dim=1)  # [B, S+s]
        return self.tokens[name]

    def __repr__(self) -> str:
        return f"DynamicCache(layers={len(self)}, seq_length={self.get_seq_length()})"


class StaticCache(_Cache):
    """Preallocated to ``max_length`` tokens, so decoding steps keep fixed shapes (as gpt-fast).
    Buffers are allocated on the first update, with that update's batch, heads, dtype and device.
    Attention sees all ``max_length`` slots; slots not written yet are masked out."""

    def __init__(self, max_length: int):
        if max_length < 1:
            raise CacheError(f"StaticCache max_length must be at least 1, got {max_length}")
        super().__init__()  # per layer, k: [B, Hkv, max_length, Dh]
        self.max_length = max_length
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def key_length(self, total: int) -> int:
        if total > self.max_length:
            raise CacheError(f"StaticCache holds {self.max_length} tokens but this step needs {total}; "
                             f"create it with a larger max_length")
        return self.max_length

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, start: int):
        if layer_idx == len(self.keys):
            shape = (*k.shape[:2], self.max_length, k.shape[-1])
            self.keys.append(k.new_zeros(shape))
            self.values.append(v.new_zeros(shape))
        end = start + k.shape[-2]
        self.keys[layer_idx][:, :, start:end] = k
        self.values[layer_idx][:, :, start:end] = v
        if layer_idx == 0:
            self.length = end
        return self.keys[layer_idx], self.values[layer_idx]

    def update_tokens(self, name: str, values: torch.Tensor, start: int) -> torch.Tensor:
        """Record ``values`` [B, s] for the tokens at ``start...``; returns all ``max_length`` slots
        (zeros where nothing was written)."""
        if name not in self.tokens:
            self.tokens[name] = values.new_zeros(values.shape[0], self.max_length)  # [B, max_length]
        self.tokens[name][:, start:start + values.shape[1]] = values
        return self.tokens[name]

    def __repr__(self) -> str:
        return f"StaticCache(layers={len(self)}, seq_length={self.length}, max_length={self.max_length})"
