"""Output-only training from cached features (`--train output --cache-features`).

With only the output layer learning, the body's features at the output tokens
never change, so each distinct example is run through the frozen model once
(eval mode: no dropout) and the head trains on the cache. The paper reports
500-2000x faster epochs this way.

NOTE: examples are keyed by their bytes, so the cache also works for tasks that
draw fresh training batches every step: Bit XOR has only 1024 distinct inputs,
while a task whose inputs never repeat (Bit Memory) gains nothing but stays exact.
The batches drawn are the same as without the cache, so for the same seed and
steps, with dropout 0, results match training the head through the model.
"""
from __future__ import annotations

import torch

from fpt.models.model import FPT


class FeatureCache:
    """Memoised `model.features(x)` per example; `logits` = the head on cached features."""

    def __init__(self, model: FPT, autocast):
        self.model = model
        self.autocast = autocast  # () -> context manager, the run's precision
        self.store: dict[bytes, torch.Tensor] = {}
        self.computed = 0  # examples run through the body

    @staticmethod
    def _key(x: torch.Tensor, length: torch.Tensor | None) -> bytes:
        key = x.detach().cpu().contiguous().numpy().tobytes()
        return key if length is None else key + int(length).to_bytes(8, "little")

    @torch.no_grad()
    def features(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, ...) inputs -> (B, K, D) body features, computing only examples not seen before."""
        keys = [self._key(x[i], None if lengths is None else lengths[i]) for i in range(x.shape[0])]
        todo, seen = [], set()  # the first row of each example not cached yet
        for i, k in enumerate(keys):
            if k not in self.store and k not in seen:
                seen.add(k)
                todo.append(i)
        if todo:
            idx = torch.tensor(todo, device=x.device)
            was_training = self.model.training
            self.model.eval()
            with self.autocast():
                feats = self.model.features(x[idx], None if lengths is None else lengths[idx]).float()
            self.model.train(was_training)
            for j, i in enumerate(todo):
                self.store[keys[i]] = feats[j]
            self.computed += len(todo)
        return torch.stack([self.store[k] for k in keys])  # (B, K, D)

    def logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.head(self.features(x, lengths))
