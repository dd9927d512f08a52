"""The cache keys: what each result depends on, turned into partition keys.

A `Selection` fixes which rows of a dataset split a run covers and how they are sharded; an
`AnswerSource` fixes which describer answered, with which prompts and generation settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from method.prompts import class_prompts_hash, content_hash, image_prompts_hash
from storage.paths import NONE


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
    describer: str
    max_new_tokens: int = 77
    class_samples: int = 3

    def image_keys(self) -> dict[str, str]:
        """Image answers depend on the prompts and the generation length, not on class samples."""
        return {
            "describer": self.describer,
            "prompts": image_prompts_hash(),
            "gen": content_hash({"max_new_tokens": self.max_new_tokens}),
        }

    def class_keys(self) -> dict[str, str]:
        return {
            "describer": self.describer,
            "prompts": class_prompts_hash(),
            "gen": content_hash({"max_new_tokens": self.max_new_tokens, "samples": self.class_samples}),
        }


NO_ANSWERS = {"describer": NONE, "prompts": NONE, "gen": NONE}
