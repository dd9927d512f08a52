"""Per-row seeded sampling inside a batched greedy `generate()`, and reading its output rows.

`generate(do_sample=True)` draws every row from one global RNG, so a sample depends on what else is
in the batch and on the batch size. Instead each row gets its own generator, seeded by
`backends.base.sample_seed`, and the sampler adds Gumbel noise -log(E), E ~ Exp(1), to logits / T
before the greedy argmax: argmax(logits / T + Gumbel) is an exact draw from softmax(logits / T) over
the whole vocabulary (the Gumbel-max trick; no top-k, top-p 1), and row r's noise at step k depends
only on its seed, k and the device type. The noise is drawn in float32 by generators on the scores'
own device: no float64 draw on the CPU and no copy to the GPU at every step (perf.bench
`sampler` times it against plain multinomial sampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedModel

_TINY = torch.finfo(torch.float32).tiny  # Exp(1) draws of exactly 0 would give infinite noise


class SeededGumbel(LogitsProcessor):
    """Turns greedy decoding into temperature sampling with one seeded generator per row."""

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature
        self.seeds = [int(seed) for seed in seeds]
        self._generators: dict[torch.device, list[torch.Generator]] = {}

    def generators_on(self, device: torch.device) -> list[torch.Generator]:
        """The rows' generators on `device`, made (and seeded) the first time it is asked for."""
        if device not in self._generators:
            self._generators[device] = [torch.Generator(device).manual_seed(s) for s in self.seeds]
        return self._generators[device]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"{scores.shape[0]} rows for {len(self.seeds)} seeds")
        noise = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        for row, generator in zip(noise, self.generators_on(scores.device), strict=True):
            row.exponential_(generator=generator)
        return scores.float() / self.temperature - noise.clamp_(min=_TINY).log_()


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
