"""The key/value cache of the engine's running rows, and the rows themselves.

:class:`RowCache` holds per layer ``[rows, kv_heads, length, head_dim]``, rows right-aligned
(a row's own tokens end at the last column; padding on the left is masked). :class:`Rows`
pairs it with the rows' jobs, attention mask ``[rows, length]`` and last tokens ``[rows]``;
rows leave (:meth:`Rows.keep`, which also drops the columns that are padding for every row
left) and join (:meth:`Rows.join`, left-padding the shorter side) between two steps.
"""

from __future__ import annotations

import torch


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim)


class RowCache:
    """Key/value cache of a set of rows (see module doc).

    Implements the two methods the decoder calls (``update``, ``get_seq_length``). Each layer's
    tensors have room to grow (doubling), so a step writes one column in place instead of
    copying the whole cache.
    """

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers  # buffers, ``lengths[i]`` columns used
        self.values: list[torch.Tensor | None] = [None] * layers
        self.lengths = [0] * layers

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.lengths[i]
        return self.keys[i][:, :, :n], self.values[i][:, :, :n]

    def set(self, i: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.keys[i], self.values[i], self.lengths[i] = key, value, key.shape[2]

    def update(self, key, value, layer_idx: int, *args, **kwargs):
        n, q = self.lengths[layer_idx], key.shape[2]
        buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx]
        if buf_k is None or n + q > buf_k.shape[2]:
            room = max(2 * (n + q), 64)
            grown_k = key.new_empty(key.shape[0], key.shape[1], room, key.shape[3])
            grown_v = value.new_empty(value.shape[0], value.shape[1], room, value.shape[3])
            if n:
                grown_k[:, :, :n] = buf_k[:, :, :n]
                grown_v[:, :, :n] = buf_v[:, :, :n]
            buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx] = grown_k, grown_v
        buf_k[:, :, n:n + q] = key
        buf_v[:, :, n:n + q] = value
        self.lengths[layer_idx] = n + q
        return buf_k[:, :, :n + q], buf_v[:, :, :n + q]


class Rows:
    """The running rows: their jobs, cache, attention mask ``[rows, length]`` and last tokens."""

    def __init__(self, jobs: list, cache: RowCache, mask: torch.Tensor, last: torch.Tensor):
        self.jobs, self.cache, self.mask, self.last = jobs, cache, mask, last

    def __len__(self) -> int:
        return len(self.jobs)

    def keep(self, rows: list[int]) -> "Rows":
        """Only ``rows`` (in order), with the columns that are padding for all of them dropped."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(0).nonzero()
        first = int(used[0]) if len(used) else mask.shape[1]
        cache = RowCache(len(self.cache.keys))
        for i in range(len(cache.keys)):
            k, v = self.cache.layer(i)
            cache.set(i, k[:, :, first:].index_select(0, index), v[:, :, first:].index_select(0, index))
        return Rows([self.jobs[i] for i in rows], cache, mask[:, first:], self.last.index_select(0, index))

    def join(self, other: "Rows") -> "Rows":
        """These rows and ``other``'s, left-padded to a common length."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        pa, pb = width - self.mask.shape[1], width - other.mask.shape[1]
        cache = RowCache(len(self.cache.keys))
        for i in range(len(cache.keys)):
            (ka, va), (kb, vb) = self.cache.layer(i), other.cache.layer(i)
            cache.set(i, torch.cat([_pad_left(ka, pa, 2), _pad_left(kb, pb, 2)]),
                      torch.cat([_pad_left(va, pa, 2), _pad_left(vb, pb, 2)]))
        mask = torch.cat([_pad_left(self.mask, pa, 1), _pad_left(other.mask, pb, 1)])
        return Rows(self.jobs + other.jobs, cache, mask, torch.cat([self.last, other.last]))
