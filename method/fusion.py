"""The method's math: pure NumPy, no I/O. Every formula of the paper that wdys uses lives here.

n(v) = v / ||v||.  An image x has three components, each normalised:
    image       i = n(f_img(x))
    description d = n(f_txt(D(x)))
    prediction  p = n(f_txt(P(x)))
The query of a component subset S is q = n(sum_{s in S} s); logits = q . W^T against class weights W.
{image} alone is plain CLIP zero-shot. A component that is missing for an image (its answer failed)
is left out of that image's sum; an image with none of the chosen components has no query.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

COMPONENTS = ("image", "description", "prediction")
CLASS_WEIGHTINGS = ("name", "template", "templates", "descriptions", "sum")
# The paper's class weightings; `templates` (CLIP's 80 ImageNet prompt templates, the usual CLIP
# zero-shot baseline) and `sum` (name + template + descriptions) are wdys's extensions.
PAPER_WEIGHTINGS = ("name", "template", "descriptions")
SHORTLIST_WEIGHTING = "templates"  # the image-only scores that rank classes for a shortlist
_EPS = 1e-12


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (NaN rows stay NaN: they mark a missing component)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, _EPS)


def component_subsets() -> list[tuple[str, ...]]:
    """All seven non-empty subsets of the components, smallest first, image-only first."""
    return [s for r in range(1, len(COMPONENTS) + 1) for s in combinations(COMPONENTS, r)]


def subset_name(subset: Sequence[str]) -> str:
    return "+".join(subset)


def fuse(components: dict[str, np.ndarray], subset: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Query vectors of one subset and a mask of the rows that have at least one chosen component.

    `components` maps a component name to (n, dim) normalised vectors, NaN rows where missing.
    """
    stacked = np.stack([components[name] for name in subset])  # (k, n, dim)
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


def sum_weights(name: np.ndarray, template: np.ndarray, descriptions: np.ndarray) -> np.ndarray:
    """The `sum` weighting: n(name + template + descriptions), each already normalised."""
    return normalize(name + template + descriptions)
