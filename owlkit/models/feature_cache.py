"""An LRU of image features: a repeated image skips the vision encoder and the abstractor.

Multi-turn chat sends the same image with every turn, the server sees the same image from many
clients, an evaluation asks several questions about one image. The key is a hash of the
preprocessed pixels (so the image's bytes and every preprocessing choice: size, mode,
normalisation) with their shape and dtype; the value is what ``encode_images`` returned for that
image. Only used without gradients (inference), bounded in megabytes, least recently used first
out. Hashing the preprocessed pixels costs a small fraction of encoding them (docs/serving.md,
"Repeated images").
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


class FeatureCache:
    def __init__(self, max_mb: float = 256.0):
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # the server's worker and API threads share a model
        self.hits = self.misses = 0

    @staticmethod
    def key(pixels: torch.Tensor) -> bytes:
        data = pixels.detach().contiguous().cpu()
        digest = hashlib.blake2b(f"{tuple(data.shape)}{data.dtype}".encode(), digest_size=20)
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        return digest.digest()

    def encode(self, pixel_values: torch.Tensor, encode) -> torch.Tensor:
        """``encode(pixel_values)`` with the rows seen before taken from the cache."""
        keys = [self.key(row) for row in pixel_values]
        with self._lock:
            found = {i: self._items[k] for i, k in enumerate(keys) if k in self._items}
            for i in found:
                self._items.move_to_end(keys[i])
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            fresh = encode(pixel_values[missing])
            with self._lock:
                for i, feats in zip(missing, fresh):
                    found[i] = feats
                    self._put(keys[i], feats)
        return torch.stack([found[i] for i in range(len(keys))])

    def _put(self, key: bytes, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = feats
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> dict:
        return {"images": len(self._items), "mb": round(self._bytes / 2**20, 2), "hits": self.hits, "misses": self.misses}
