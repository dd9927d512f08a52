"""The cache keys: what each result depends on, turned into partition keys.

A `Selection` fixes which rows of a dataset split a run covers and how they are sharded; an
`Answerer` fixes which describer answered, with which prompts and generation settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from method.prompts import (
    ANSWER_KINDS,
    MAX_NEW_TOKENS,
    PROMPT_OF_KIND,
    AnswerKind,
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
class Answerer:
    """A describer with its generation settings. `settings` is everything its answers depend on
    (`backends.registry.describer_settings`: backend, model and revision, endpoint, dtype, every
    generation setting); `class_samples` sampled class descriptions per class and prompt;
    `shortlist` = k lists only the top-k classes (ranked by an encoder's image-only scores) in the
    initial-prediction prompt."""

    describer: str
    settings: str  # JSON of the describer's settings (never a secret): hashed into `gen`
    max_new_tokens: int = MAX_NEW_TOKENS
    class_samples: int = 10
    shortlist: int | None = None

    def _gen(self) -> str:
        return content_hash({"settings": self.settings})

    def answer_keys(
        self, kind: AnswerKind, class_names: Sequence[str], encoder: str | None = None
    ) -> dict[str, str]:
        """Keys of one kind of image answer. Descriptions depend on neither the class names nor the
        encoder; predictions on the class names their prompt lists, and on the encoder only through
        a shortlist."""
        shortlisted = kind == "prediction" and self.shortlist is not None
        if shortlisted and encoder is None:
            raise ValueError("a shortlisted prediction needs the encoder that ranks the classes")
        return {
            "describer": self.describer,
            "kind": kind,
            "prompts": answer_prompts_hash(kind, classes_key(class_names)),
            "gen": self._gen(),
            "shortlist": shortlist_key(f"top{self.shortlist}", encoder) if shortlisted else NONE,
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
        """Keys of the describer's class descriptions, besides the dataset and its `classes`."""
        gen = {"settings": self.settings, "samples": self.class_samples, "sampler": CLASS_SAMPLER}
        return {"describer": self.describer, "prompts": class_prompts_hash(), "gen": content_hash(gen)}


def classes_key(class_names: Sequence[str]) -> str:
    """The `classes` key: a hash of the class names in label order. Everything a name goes into
    (class descriptions, class weights, the initial-prediction prompt, predictions) is keyed on it,
    so renaming a class recomputes those and nothing else."""
    return content_hash({"classes": list(class_names)})


def answer_prompts_hash(kind: AnswerKind, classes: str) -> str:
    """An image answer's `prompts` key: the description prompt's hash (no class names), or that of
    the initial-prediction prompt with the `classes` key of the names it lists."""
    if kind == "description":
        return content_hash(PROMPT_OF_KIND[kind])
    return content_hash({"prompt": PROMPT_OF_KIND[kind], "classes": classes})


# How class descriptions are sampled, beyond the describer's settings: 2 since issue 19 (`openai:`
# sends top_p 1; `hf:` draws its seeded noise in float32 on the model's device, not in float64 on
# the CPU, so its samples differ from those before).
CLASS_SAMPLER = 2


def shortlist_key(run_shortlist: str, encoder: str | None) -> str:
    """A shortlisted prediction's key: the run's `top<k>` and the encoder that ranked the classes."""
    return f"{run_shortlist}-{partition_value(encoder)}"


def run_answer_keys(run: dict[str, str]) -> list[dict[str, str]]:
    """The `descriptions` keys of a run's two kinds of answer, from a run's key values (as stored);
    none for a run without a describer, or one made with other than the current prompts (their
    per-kind hashes cannot be told from the run's)."""
    if partition_value(run["describer"]) == NONE or run["prompts"] != image_prompts_hash():
        return []
    keys = []
    for kind in ANSWER_KINDS:
        shortlist = run.get("shortlist", NONE)
        if kind == "prediction" and shortlist != NONE:
            shortlist = shortlist_key(shortlist, run["encoder"])
        else:
            shortlist = NONE
        data = {k: run[k] for k in ("dataset", "split", "subset", "describer", "gen")}
        prompts = answer_prompts_hash(kind, run["classes"])
        keys.append({**data, "kind": kind, "prompts": prompts, "shortlist": shortlist})
    return keys


def run_keys(
    selection: Selection,
    class_names: Sequence[str],
    encoder: str,
    answerer: Answerer | None,
    weighting: str,
) -> dict[str, str]:
    """The keys of one run (a `predictions` partition): data, class names, encoder, answerer,
    weighting; without an answerer, the image-only baseline's."""
    answers = answerer.run_keys() if answerer else IMAGE_ONLY_RUN
    classes = classes_key(class_names)
    return {**selection.keys(), "classes": classes, "encoder": encoder, **answers, "class_weights": weighting}


NO_ANSWERS = {"describer": NONE, "prompts": NONE, "gen": NONE}

# Run keys of the image-only baseline (plain zero-shot, no describer: `describers=[]`).
IMAGE_ONLY_RUN = {**NO_ANSWERS, "shortlist": NONE}
