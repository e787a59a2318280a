"""The decode batch's key/value cache and attention mask, with the row surgery continuous batching needs.

Layout: every layer holds keys/values of shape (rows, kv_heads, columns, head_dim), on the model's device;
``mask`` (rows x columns, True = a real token, on the CPU) says which columns each row attends to. Rows are
left-padded when they join (columns before a row's prompt are False), and prompt-lookup verification leaves
holes (rejected draft tokens stay in the tensors, masked off). The models' causal mask is column-based (query i
sees columns <= its own) and rotary positions come from explicit ``position_ids``, so holes and padding are
exact.

Operations: ``select`` (drop finished or cancelled rows), ``merge`` (append rows that were prefilled
separately, padding the shorter side on the left) and ``compact`` (re-pack each row's real columns to the
right once masked columns dominate). Layers grow into spare capacity rather than re-allocating per token.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

#: Columns allocated at least, and the growth factor, when a layer runs out of room.
_MIN_CAPACITY = 64
_GROWTH = 1.5


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A ``DynamicLayer`` whose tensors are views into a buffer with spare columns (amortized appends)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._kbuf = torch.empty(0)
        self._vbuf = torch.empty(0)
        self._length = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.set_states(key_states, value_states)
            return self.states()
        new = key_states.shape[-2]
        if self._length + new > self._kbuf.shape[-2]:
            self._reserve(self._length + new)
        self._kbuf[:, :, self._length : self._length + new].copy_(key_states)
        self._vbuf[:, :, self._length : self._length + new].copy_(value_states)
        self._length += new
        return self._refresh()

    def states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The live keys and values (views, rows x heads x columns x dim)."""
        return self._kbuf[:, :, : self._length], self._vbuf[:, :, : self._length]

    def set_states(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the contents (rows/columns already rearranged by the caller)."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self._kbuf, self._vbuf = keys.contiguous(), values.contiguous()
        self._length = keys.shape[-2]
        self._refresh()

    def truncate(self, columns: int) -> None:
        """Forget the last ``columns`` columns (they stay allocated for the next append)."""
        self._length = max(0, self._length - columns)
        self._refresh()

    def _reserve(self, columns: int) -> None:
        capacity = max(_MIN_CAPACITY, columns, int(self._kbuf.shape[-2] * _GROWTH))
        kbuf = self._kbuf.new_empty((*self._kbuf.shape[:2], capacity, self._kbuf.shape[-1]))
        vbuf = self._vbuf.new_empty((*self._vbuf.shape[:2], capacity, self._vbuf.shape[-1]))
        kbuf[:, :, : self._length].copy_(self._kbuf[:, :, : self._length])
        vbuf[:, :, : self._length].copy_(self._vbuf[:, :, : self._length])
        self._kbuf, self._vbuf = kbuf, vbuf

    def _refresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        # transformers reads `keys`/`values` (e.g. get_seq_length): keep them the live views.
        self.keys, self.values = self.states()
        return self.keys, self.values


def new_cache() -> DynamicCache:
    """An empty cache that creates a ``GrowingLayer`` per model layer on first use."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def _layers(cache: DynamicCache) -> list[GrowingLayer]:
    layers = []
    for layer in cache.layers:
        if not isinstance(layer, GrowingLayer):
            raise TypeError(f"unexpected cache layer {type(layer).__name__}")
        if layer.is_initialized:
            layers.append(layer)
    return layers


class BatchKV:
    """A cache and its mask, row-aligned with the engine's list of live rows."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask

    @classmethod
    def empty(cls) -> BatchKV:
        return cls(new_cache(), torch.zeros((0, 0), dtype=torch.bool))

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    def attention_mask(self, new: torch.Tensor) -> torch.Tensor:
        """The 2D mask for a forward that appends ``new`` (rows x new columns) to the cache."""
        return torch.cat([self.mask, new], dim=1)

    def commit(self, new: torch.Tensor) -> None:
        """Record the columns a forward appended (``new`` may mask some off: rejected drafts)."""
        self.mask = torch.cat([self.mask, new], dim=1)

    def truncate(self, columns: int) -> None:
        """Drop the last ``columns`` columns of every row."""
        if columns <= 0:
            return
        self.mask = self.mask[:, : self.columns - columns]
        for layer in _layers(self.cache):
            layer.truncate(columns)

    def select(self, rows: list[int]) -> None:
        """Keep ``rows`` (in that order); drops the others' cache."""
        if rows == list(range(self.rows)):
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.mask = self.mask.index_select(0, index)
        for layer in _layers(self.cache):
            keys, values = layer.states()
            on = index.to(keys.device)  # the cache may live on a GPU, the mask stays on the CPU
            layer.set_states(keys.index_select(0, on), values.index_select(0, on))
        if not rows:
            self.cache = new_cache()
            self.mask = torch.zeros((0, 0), dtype=torch.bool)

    def merge(self, other: BatchKV) -> None:
        """Append ``other``'s rows after ours, left-padding whichever side has fewer columns."""
        if self.rows == 0:
            self.cache, self.mask = other.cache, other.mask
            return
        width = max(self.columns, other.columns)
        mine, theirs = _layers(self.cache), _layers(other.cache)
        if len(mine) != len(theirs):
            raise RuntimeError("caches to merge hold different numbers of layers")
        for layer, incoming in zip(mine, theirs, strict=True):
            (keys, values), (new_keys, new_values) = layer.states(), incoming.states()
            layer.set_states(
                torch.cat([_pad_left(keys, width), _pad_left(new_keys, width)], dim=0),
                torch.cat([_pad_left(values, width), _pad_left(new_values, width)], dim=0),
            )
        self.mask = torch.cat([_pad_left_mask(self.mask, width), _pad_left_mask(other.mask, width)], dim=0)

    def waste(self) -> int:
        """Columns the batch could shed: the total minus the most real tokens any row holds."""
        if self.rows == 0:
            return 0
        return self.columns - int(self.mask.sum(dim=1).max().item())

    def compact(self) -> None:
        """Move every row's real columns to the right end, in order, and drop the columns no row needs."""
        if self.rows == 0:
            return
        keep = int(self.mask.sum(dim=1).max().item())
        # A stable sort of the mask puts each row's masked columns first and its real ones last, in order.
        order = torch.sort(self.mask.to(torch.int8), dim=1, stable=True).indices[:, self.columns - keep :]
        self.mask = self.mask.gather(1, order)
        for layer in _layers(self.cache):
            keys, values = layer.states()
            on = order.to(keys.device)
            layer.set_states(_gather_columns(keys, on), _gather_columns(values, on))


def _gather_columns(states: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    rows, heads, _, dim = states.shape
    return states.gather(2, order[:, None, :, None].expand(rows, heads, order.shape[1], dim))


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - states.shape[-2]
    if missing == 0:
        return states
    rows, heads, _, dim = states.shape
    return torch.cat([states.new_zeros((rows, heads, missing, dim)), states], dim=2)


def _pad_left_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)
