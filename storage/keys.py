"""The cache keys: what each result depends on, turned into partition keys.

A `Selection` fixes which rows of a dataset split a run covers and how they are sharded; an
`AnswerSource` fixes which describer answered, with which prompts and generation settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from method.prompts import (
    DESCRIPTION_PROMPT,
    PREDICTION_PROMPT,
    class_prompts_hash,
    content_hash,
    image_prompts_hash,
)
from storage.paths import NONE, partition_value


@dataclass(frozen=True)
class Selection:
    dataset: str
    split: str
    limit: int | None = None
    seed: int | None = None
    shard_size: int = 256

    @property
    def subset(self) -> str:
        """Readable: 'all-shard256', 'first100-shard256', 'sample500-seed0-shard256'."""
        if self.limit is None:
            rows = "all"
        elif self.seed is None:
            rows = f"first{self.limit}"
        else:
            rows = f"sample{self.limit}-seed{self.seed}"
        return f"{rows}-shard{self.shard_size}"

    def keys(self) -> dict[str, str]:
        return {"dataset": self.dataset, "split": self.split, "subset": self.subset}


@dataclass(frozen=True)
class AnswerSource:
    """A describer with its generation settings. `settings` is everything its answers depend on
    (`backends.registry.describer_settings`: backend, model and revision, endpoint, dtype, every
    generation setting); `class_samples` sampled class descriptions per class and prompt;
    `shortlist` = k lists only the top-k classes (ranked by an encoder's image-only scores) in the
    initial-prediction prompt."""

    describer: str
    settings: str  # JSON of the describer's settings (never a secret): hashed into `gen`
    max_new_tokens: int = 77
    class_samples: int = 10
    shortlist: int | None = None

    def _gen(self) -> str:
        return content_hash({"settings": self.settings})

    def answer_keys(self, kind: str, encoder: str | None = None) -> dict[str, str]:
        """Keys of one kind of image answer. Descriptions never depend on the encoder; predictions
        do only through a shortlist."""
        prompt = DESCRIPTION_PROMPT if kind == "description" else PREDICTION_PROMPT
        shortlisted = kind == "prediction" and self.shortlist is not None
        if shortlisted and encoder is None:
            raise ValueError("a shortlisted prediction needs the encoder that ranks the classes")
        return {
            "describer": self.describer,
            "kind": kind,
            "prompts": content_hash(prompt),
            "gen": self._gen(),
            "shortlist": f"top{self.shortlist}-{partition_value(encoder)}" if shortlisted else NONE,
        }

    def run_keys(self) -> dict[str, str]:
        """What a classification depends on besides the data, the encoder and the class weights."""
        return {
            "describer": self.describer,
            "prompts": image_prompts_hash(),
            "gen": self._gen(),
            "shortlist": NONE if self.shortlist is None else f"top{self.shortlist}",
        }

    def class_keys(self) -> dict[str, str]:
        return {
            "describer": self.describer,
            "prompts": class_prompts_hash(),
            "gen": content_hash({"settings": self.settings, "samples": self.class_samples}),
        }


NO_ANSWERS = {"describer": NONE, "prompts": NONE, "gen": NONE}

# Run keys of the image-only baseline (plain zero-shot, no describer: `describers=[]`).
IMAGE_ONLY_RUN = {**NO_ANSWERS, "shortlist": NONE}
