"""Next-token choice for a batch whose rows have their own sampling settings.

Greedy rows take the argmax. Sampled rows apply their temperature and nucleus (top-p) cut, vectorized
over the batch, then draw with their own ``torch.Generator``: a row seeded with ``seed`` draws the same
tokens whatever else shares its batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

#: Temperatures at or below this are greedy decoding.
GREEDY_EPSILON = 1e-5


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(1 << 63))
    return generator


@dataclass(slots=True)
class RowSampler:
    """One row's sampling settings and random stream."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator = field(default_factory=lambda: make_generator(None))

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_EPSILON


def choose_tokens(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[int]:
    """One token per row of ``logits`` (rows x vocab)."""
    chosen: list[int] = logits.argmax(dim=-1).tolist()
    sampled = [row for row, sampler in enumerate(samplers) if not sampler.greedy]
    if not sampled:
        return chosen
    rows = torch.tensor(sampled, dtype=torch.long)
    temps = torch.tensor([samplers[row].temperature for row in sampled], dtype=torch.float32).unsqueeze(1)
    probs = torch.softmax(logits.index_select(0, rows).float() / temps, dim=-1)
    top_ps = [samplers[row].top_p for row in sampled]
    if any(p < 1.0 for p in top_ps):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Drop a token once the mass before it already reaches top_p (the first token always stays).
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        cut = before >= torch.tensor(top_ps, dtype=torch.float32).unsqueeze(1)
        sorted_probs = sorted_probs.masked_fill(cut, 0.0)
        for k, row in enumerate(sampled):
            pick = torch.multinomial(sorted_probs[k], 1, generator=samplers[row].generator)
            chosen[row] = int(order[k, pick].item())
        return chosen
    for k, row in enumerate(sampled):
        chosen[row] = int(torch.multinomial(probs[k], 1, generator=samplers[row].generator).item())
    return chosen
