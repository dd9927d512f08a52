"""The method's math: pure NumPy, no I/O. Every formula of the paper that wdys uses lives here.

n(v) = v / ||v||.  An image x has three components, each normalised:
    image       i = n(f_img(x))
    description d = n(f_txt(D(x)))
    prediction  p = n(f_txt(P(x)))
The query of a combination S of components is q = n(sum_{s in S} s); logits = q . W^T against class weights W.
{image} alone is plain CLIP zero-shot. A component that is missing for an image (its answer failed)
is left out of that image's sum; an image with none of the chosen components has no query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal, TypeVar

import numpy as np

from method.prompts import ANSWER_KINDS

COMPONENTS = ("image", *ANSWER_KINDS)
_EPS = 1e-12


@dataclass(frozen=True)
class Weighting:
    """How one class weighting makes a class's row of W: from which texts (`texts`: the class name,
    one template, CLIP's templates or the describer's class descriptions), combined how
    (`normalize` one text, `ensemble` many, or `sum` of other weightings' rows, `parts`)."""

    name: str
    texts: str
    combine: Literal["normalize", "ensemble", "sum"]
    in_paper: bool
    parts: tuple[str, ...] = ()

    @property
    def needs_descriptions(self) -> bool:
        return self.texts == "descriptions" or any(WEIGHTINGS[p].needs_descriptions for p in self.parts)


# Every class weighting, declared once; the paper's are name, template and descriptions. `templates`
# (CLIP's 80 ImageNet prompt templates, the usual CLIP zero-shot baseline) and `sum` are extensions.
WEIGHTINGS: dict[str, Weighting] = {
    w.name: w
    for w in (
        Weighting("name", texts="name", combine="normalize", in_paper=True),
        Weighting("template", texts="template", combine="normalize", in_paper=True),
        Weighting("templates", texts="templates", combine="ensemble", in_paper=False),
        Weighting("descriptions", texts="descriptions", combine="ensemble", in_paper=True),
        Weighting("sum", texts="", combine="sum", in_paper=False, parts=("name", "template", "descriptions")),
    )
}
CLASS_WEIGHTINGS = tuple(WEIGHTINGS)
PAPER_WEIGHTINGS = tuple(w.name for w in WEIGHTINGS.values() if w.in_paper)
NEEDS_DESCRIPTIONS = tuple(w.name for w in WEIGHTINGS.values() if w.needs_descriptions)
SHORTLIST_WEIGHTING = "templates"  # the image-only scores that rank classes for a shortlist
A = TypeVar("A")


def weighting_answerer(weighting: str, answerer: A | None) -> A | None:
    """The answerer a weighting is made from: None for one made without class descriptions, so
    it is computed once and serves every answerer (its address, its task and its readers agree)."""
    return answerer if WEIGHTINGS[weighting].needs_descriptions else None


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (NaN rows stay NaN: they mark a missing component)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, _EPS)


def component_combinations() -> list[tuple[str, ...]]:
    """All seven non-empty combinations of the components, smallest first, image-only first."""
    return [s for r in range(1, len(COMPONENTS) + 1) for s in combinations(COMPONENTS, r)]


def combination_name(combination: Sequence[str]) -> str:
    return "+".join(combination)


def fuse(components: dict[str, np.ndarray], combination: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Query vectors of one combination and a mask of the rows that have at least one chosen component.

    `components` maps a component name to (n, dim) normalised vectors, NaN rows where missing.
    """
    stacked = np.stack([components[name] for name in combination])  # (k, n, dim)
    present = ~np.isnan(stacked).any(axis=-1)  # (k, n)
    total = np.where(present[..., None], stacked, 0.0).sum(axis=0)
    valid = present.any(axis=0)
    return normalize(total), valid


def logits(queries: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    return queries @ class_weights.T


def top_k(scores: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best classes per row, best first (ties broken by class index)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def shortlist(scores: np.ndarray, k: int) -> list[list[int]]:
    """The k best classes of each row, in the dataset's class order (the prompt lists them so, and
    so does not reveal the ranking to the describer)."""
    best, _ = top_k(scores, k)
    return [sorted(row.tolist()) for row in best]


def ensemble(per_class: Sequence[np.ndarray]) -> np.ndarray:
    """n(mean over k of n(e_k)) for each class: the templates and descriptions weightings."""
    return normalize(np.stack([normalize(e).mean(axis=0) for e in per_class]))


def combine_texts(weighting: Weighting, per_class: Sequence[np.ndarray]) -> np.ndarray:
    """W from each class's text embeddings: n(e) of its one text, or n(mean_k n(e_k)) of many."""
    if weighting.combine == "normalize":
        return normalize(np.concatenate(per_class))
    return ensemble(per_class)


def sum_weights(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The `sum` weighting: n(name + template + descriptions), each already normalised."""
    return normalize(np.sum(parts, axis=0))


def component_order() -> list[str]:
    """The combinations' names in the order every table lists them."""
    return [combination_name(s) for s in component_combinations()]
