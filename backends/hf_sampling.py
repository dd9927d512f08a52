"""Per-row seeded sampling inside a batched greedy `generate()`, and reading its output rows.

`generate(do_sample=True)` draws every row from one global RNG, so a sample depends on what else is
in the batch and on the batch size. Instead each row gets its own generator, seeded by
`backends.base.sample_seed`, whose Gumbel noise is added to logits / T before the greedy argmax:
argmax(logits / T + Gumbel) is an exact draw from softmax(logits / T) (the Gumbel-max trick), and
row r's noise at step k depends only on its seed and k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedModel


class SeededGumbel(LogitsProcessor):
    """Turns greedy decoding into temperature sampling with one seeded generator per row."""

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows for {len(self.generators)} seeds")
        vocab = scores.shape[-1]
        # Drawn on the CPU so that a row's noise is the same on every device.
        uniform = torch.stack([torch.rand(vocab, generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300)))
        return scores.float() / self.temperature + gumbel.to(scores.device, torch.float32)


def eos_ids(model: PreTrainedModel) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.get_text_config().eos_token_id
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def completion_length(row: torch.Tensor, eos: set[int]) -> tuple[int, bool]:
    """(generated tokens up to and including the first EOS, whether it stopped at the token limit
    instead); what follows the EOS is padding."""
    for i, token in enumerate(row.tolist()):
        if token in eos:
            return i + 1, False
    return len(row), True
