"""The benchmark's stages. Each submits one stage's tasks for one dataset split and returns what the
next stage needs: per shard, the futures of the shards it reads. A task receives those futures as
arguments: Prefect waits for them and hands it their results (each a `ShardResult` with its shard's
path), and a failed one leaves the task not run.

Tasks are submitted in dependency order (every task after the tasks whose results it receives) to a
first-in, first-out pool, so a bounded pool cannot deadlock. An answerer of None is the image-only
baseline: no describer, so no answers, no answer embeddings and only the weightings that need none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture

from method.fusion import NEEDS_DESCRIPTIONS, SHORTLIST_WEIGHTING, WEIGHTINGS, weighting_answerer
from method.prompts import AnswerKind
from storage.keys import Answerer, run_keys
from tasks.answers import for_describer
from tasks.class_weights import class_weights_task, describe_classes
from tasks.classify import classify_shard
from tasks.describe import describe_shard, guess_shard
from tasks.embed import embed_images_shard, embed_texts_shard
from tasks.ingest import ingest_shard
from tasks.plan import Shard, ShardPlan
from tasks.progress import RunProgress, stage_of

Futures = list[PrefectFuture]  # one per shard, in shard order
MaybeAnswerer = Answerer | None


@dataclass
class Run:
    """Everything a run submitted, and the run keys of what it classifies."""

    root: str
    progress: RunProgress
    futures: list[PrefectFuture] = field(default_factory=list)
    runs: list[dict[str, str]] = field(default_factory=list)

    def submit(self, task: Task, *args: Any, **kwargs: Any) -> PrefectFuture:
        """Submit a task and count it in the progress of the stage it declares (a shard's images)."""
        future = task.submit(*args, **kwargs)
        self.futures.append(future)
        shard = next((a for a in args if isinstance(a, Shard)), None)
        self.progress.expect(future, stage_of(task), len(shard.rows) if shard else 0)
        return future


def ingest(run: Run, plan: ShardPlan) -> Futures:
    return [run.submit(ingest_shard, run.root, plan.shard(s)) for s in range(len(plan.shards))]


def answer(
    run: Run, plan: ShardPlan, manifests: Futures, answerers: Sequence[MaybeAnswerer], encoders: Sequence[str]
) -> tuple[dict[tuple[MaybeAnswerer, AnswerKind], Futures], dict[str, Futures]]:
    """The describers' answers that no encoder ranks (descriptions; guesses without a shortlist) and
    every encoder's image embeddings. One describer's shards come one after another, a shard's
    description and guess back to back (the describer reads it once), and the image embeddings
    beside the first describer's, so the describer and the encoders work side by side."""
    answers: dict[tuple[MaybeAnswerer, AnswerKind], Futures] = {}
    images: dict[str, Futures] = {e: [] for e in encoders}
    for i, answerer in enumerate(answerers):
        kinds: list[tuple[AnswerKind, Task]] = []
        if answerer is not None:
            kinds.append(("description", for_describer(describe_shard, answerer.describer)))
            if answerer.shortlist is None:  # a shortlisted guess waits for an encoder (embed_answers)
                kinds.append(("prediction", for_describer(guess_shard, answerer.describer)))
        for s, manifest in enumerate(manifests):
            shard = plan.shard(s)
            for kind, shard_task in kinds:
                answers.setdefault((answerer, kind), []).append(
                    run.submit(shard_task, run.root, shard, answerer, manifest)
                )
            for encoder in encoders if i == 0 else ():
                images[encoder].append(run.submit(embed_images_shard, run.root, shard, encoder, manifest))
    return answers, images


def describe_classes_of(
    run: Run, plan: ShardPlan, answerers: Sequence[MaybeAnswerer], weightings: Sequence[str]
) -> dict[MaybeAnswerer, PrefectFuture]:
    """Each describer's class descriptions, when a weighting needs them."""
    if not set(weightings) & set(NEEDS_DESCRIPTIONS):
        return {}
    dataset, names = plan.selection.dataset, plan.class_names
    return {
        s: run.submit(for_describer(describe_classes, s.describer), run.root, dataset, names, s)
        for s in answerers
        if s
    }


def class_weights(
    run: Run,
    plan: ShardPlan,
    encoder: str,
    answerers: Sequence[MaybeAnswerer],
    weightings: Sequence[str],
    class_answers: dict[MaybeAnswerer, PrefectFuture],
) -> dict[tuple[str, MaybeAnswerer], PrefectFuture]:
    """Every weighting an encoder needs, keyed by (weighting, answerer); a weighting made without class
    descriptions is computed once (`weighting_answerer`: answerer None) and serves every answerer. A `sum`
    receives its parts, each submitted before it."""
    dataset, names = plan.selection.dataset, plan.class_names
    asked = [*weightings, *([SHORTLIST_WEIGHTING] if any(s and s.shortlist for s in answerers) else [])]
    needed = list(dict.fromkeys(p for w in asked for p in (*WEIGHTINGS[w].parts, w)))
    order = sorted(needed, key=lambda w: bool(WEIGHTINGS[w].parts))  # parts before what sums them
    weights: dict[tuple[str, MaybeAnswerer], PrefectFuture] = {}
    for w in order:
        for answerer in dict.fromkeys(weighting_answerer(w, s) for s in answerers):
            if w in NEEDS_DESCRIPTIONS and answerer is None:
                continue
            descriptions = class_answers.get(answerer) if WEIGHTINGS[w].texts == "descriptions" else None
            parts = [weights_for(weights, p, answerer) for p in WEIGHTINGS[w].parts]
            weights[(w, answerer)] = run.submit(
                class_weights_task, run.root, dataset, names, encoder, w, answerer, descriptions, parts
            )
    return weights


def weights_for(
    weights: dict[tuple[str, MaybeAnswerer], PrefectFuture], weighting: str, answerer: MaybeAnswerer
) -> PrefectFuture:
    return weights[(weighting, weighting_answerer(weighting, answerer))]


def embed_answers(
    run: Run,
    plan: ShardPlan,
    encoder: str,
    answerer: MaybeAnswerer,
    manifests: Futures,
    images: Futures,
    answers: dict[tuple[MaybeAnswerer, AnswerKind], Futures],
    weights: dict[tuple[str, MaybeAnswerer], PrefectFuture],
) -> dict[AnswerKind, Futures]:
    """The encoder's embeddings of an answerer's descriptions and guesses; a shortlisted guess is asked
    here, since this encoder's image-only scores rank the classes it lists. None without an answerer."""
    if answerer is None:
        return {}
    guesses = answers.get((answerer, "prediction"))
    if guesses is None:
        ranking = weights_for(weights, SHORTLIST_WEIGHTING, None)
        guess = for_describer(guess_shard, answerer.describer)
        guesses = [
            run.submit(guess, run.root, plan.shard(s), answerer, manifests[s], encoder, images[s], ranking)
            for s in range(len(images))
        ]
    asked: dict[AnswerKind, Futures] = {
        "description": answers[(answerer, "description")],
        "prediction": guesses,
    }
    return {
        kind: [
            run.submit(embed_texts_shard, run.root, plan.shard(s), encoder, answerer, kind, done)
            for s, done in enumerate(shards)
        ]
        for kind, shards in asked.items()
    }


def classify(
    run: Run,
    plan: ShardPlan,
    encoder: str,
    answerer: MaybeAnswerer,
    weightings: Sequence[str],
    manifests: Futures,
    images: Futures,
    texts: dict[AnswerKind, Futures],
    weights: dict[tuple[str, MaybeAnswerer], PrefectFuture],
) -> None:
    """Every component combination of every shard under each weighting (the image alone, no answerer)."""
    for weighting in weightings:
        if answerer is None and weighting in NEEDS_DESCRIPTIONS:
            continue
        weighted = weights_for(weights, weighting, answerer)
        for s, image in enumerate(images):
            read = (manifests[s], image, weighted, {kind: t[s] for kind, t in texts.items()})
            run.submit(classify_shard, run.root, plan.shard(s), encoder, answerer, weighting, *read)
        run.runs.append(run_keys(plan.selection, plan.class_names, encoder, answerer, weighting))


def every_stage(
    run: Run, plan: ShardPlan, encoders: list[str], answerers: list[Answerer | None], weightings: list[str]
) -> None:
    """Submit every stage's tasks for one dataset split, each stage fed by the futures of the one
    before: ingest -> describe and embed images -> class weights -> embed answers -> classify."""
    manifests = ingest(run, plan)
    answers, images = answer(run, plan, manifests, answerers, encoders)
    class_answers = describe_classes_of(run, plan, answerers, weightings)
    for encoder in encoders:
        weights = class_weights(run, plan, encoder, answerers, weightings, class_answers)
        for answerer in answerers:
            shards = manifests, images[encoder]
            texts = embed_answers(run, plan, encoder, answerer, *shards, answers, weights)
            classify(run, plan, encoder, answerer, weightings, *shards, texts, weights)
