"""The two small interfaces every model backend implements.

Tasks only ever talk to an `Encoder` or a `Describer`; which concrete backend sits behind one
is decided by its model id (see `backends.registry`). Both are batched: a call takes a whole
shard's worth of inputs and the backend batches internally as suits its hardware.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from core.errors import UserError


class DescriberUnavailable(UserError):
    """The describer as a whole cannot answer: a key the server refuses, an unknown model, an
    unreachable server, a model that does not load or runs out of memory. The task fails at once
    with this message (naming the server's reason and what to check), is not retried, and nothing
    of it is stored: storing it would turn a wrong key into plausible numbers, cached for good."""


def current_run() -> str | None:
    """The id of the Prefect flow run this call serves (None outside one)."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run is not None:
        return str(task_run.task_run.flow_run_id)
    flow_run = FlowRunContext.get()
    return str(flow_run.flow_run.id) if flow_run is not None and flow_run.flow_run else None


class RunFailure:
    """A describer's failure as a whole, remembered for the run that met it alone (its later calls
    fail at once, without a request): a long-lived process (a Dask worker) asks again in the next
    run, which may come after the key, the quota or the server was fixed."""

    def __init__(self) -> None:
        self._failures: dict[str | None, DescriberUnavailable] = {}

    def remember(self, failure: DescriberUnavailable) -> DescriberUnavailable:
        """The failure this run remembers: the first one it met."""
        self._failures = {(run := current_run()): self._failures.get(run, failure)}
        return self._failures[run]

    def check(self) -> None:
        if (failure := self._failures.get(current_run())) is not None:
            raise failure


def same_settings(model_id: str, keyed: Mapping[str, object], here: Mapping[str, object]) -> None:
    """Refuses (`DescriberUnavailable`) when this process would answer with other settings than the
    ones a run's key holds, made on the flow's machine: a CPU-only flow host and a GPU worker, or a
    worker with another endpoint, would otherwise store answers under a key that does not say how
    they were made."""
    keyed, here = (json.loads(json.dumps(s, sort_keys=True, default=str)) for s in (keyed, here))
    differing = sorted(k for k in keyed.keys() | here.keys() if keyed.get(k) != here.get(k))
    if differing:
        name = differing[0]
        raise DescriberUnavailable(
            f"describer {model_id}: this worker would answer with {name} {here.get(name)!r}, but the "
            f"run's key (made on the flow's machine) says {keyed.get(name)!r}; nothing is stored: run "
            "the flow on a machine whose device and environment match its workers'"
        )


@dataclass(frozen=True)
class Answer:
    """One answer of a describer, with what it cost. `text` is None when `error` is set."""

    text: str | None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    truncated: bool = False  # the answer stopped at the token limit (finish_reason 'length')
    retryable: bool = False  # `error` is transient (rate limit, overload, timeout): ask it again later

    @property
    def final(self) -> bool:
        """A result to store: an answer, or a failure that asking again would not change."""
        return not self.retryable


# Where a describer hands each answer as it arrives: (index of the item in the call, its answer). The
# shard task saves what arrived (`tasks.answers.ShardAnswers`), so a run that fails or is killed
# midway keeps every answer it got; the call still returns them all, in order.
AnswerSink = Callable[[int, "Answer"], None]


def handed(answers: list[Answer], on_answer: AnswerSink | None, first: int = 0) -> list[Answer]:
    """Hand answers that arrived together (a batch from `first` on) to `on_answer`; returns them."""
    if on_answer is not None:
        for i, answer in enumerate(answers, start=first):
            on_answer(i, answer)
    return answers


def sample_seed(prompt: str, sample: int) -> int:
    """The seed of one sampled class description: fixed by its prompt (which names the class) and
    its index, so a sample is the same whatever batch or run it is asked in."""
    digest = hashlib.sha256(f"{sample}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class TextEmbeddings:
    """Unnormalised text embeddings plus which inputs the tokenizer had to cut to fit the context."""

    vectors: np.ndarray  # (n, dim) float32
    truncated: list[bool] = field(default_factory=list)


@runtime_checkable
class Encoder(Protocol):
    """A joint image-text embedding model (CLIP-like)."""

    model_id: str
    dim: int
    context_length: int

    @property
    def forward_passes(self) -> int:
        """Batches run through the model since load; the cache tests count these."""
        ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, not normalised."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings:
        """Texts longer than the context are truncated by the model's own tokenizer and flagged."""
        ...


@runtime_checkable
class Describer(Protocol):
    """A multimodal LLM (or a stand-in) that answers prompts about images and about class names."""

    model_id: str

    @property
    def forward_passes(self) -> int: ...

    def settings(self) -> dict[str, object]:
        """Everything the answers depend on (backend, model and revision, endpoint, dtype, generation
        settings); equal to `backends.registry.describer_settings(model_id, ...)`, which computes it
        without loading the model and makes it part of the cache key."""
        ...

    def describe(
        self, images: Sequence[Image.Image], prompt: str, on_answer: AnswerSink | None = None
    ) -> list[Answer]:
        """Free-text description of each image."""
        ...

    def guess(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        class_names: Sequence[Sequence[str]],
        on_answer: AnswerSink | None = None,
    ) -> list[Answer]:
        """Initial class guess per image, with a prompt per image (a shortlist lists different
        classes for each); `prompts[i]` already lists `class_names[i]` (backends that read prompts
        ignore the lists, stand-ins that cannot read prompts use them)."""
        ...

    def describe_classes(
        self,
        prompts: Sequence[str],
        samples: Sequence[int],
        class_names: Sequence[str],
        on_answer: AnswerSink | None = None,
    ) -> list[Answer]:
        """Text-only sampled answers (CuPL-style class descriptions), one per (prompts[i], samples[i]),
        each drawn with `sample_seed(prompts[i], samples[i])`, so that any subset can be asked again
        alone. `class_names[i]` is the class `prompts[i]` asks about (for stand-ins that cannot read).

        Every method raises `DescriberUnavailable` for a failure of the describer as a whole; a
        failure of one item is that item's `Answer.error` (`retryable` when asking again may help).
        Every method hands each answer to `on_answer` as soon as it has it (`AnswerSink`)."""
        ...
