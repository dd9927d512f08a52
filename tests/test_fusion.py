"""The method's formulas against a direct NumPy reading of the paper, on random vectors."""

from __future__ import annotations

import numpy as np
import pytest

from method.fusion import (
    combination_name,
    component_combinations,
    ensemble,
    fuse,
    logits,
    normalize,
    sum_weights,
    top_k,
)

rng = np.random.default_rng(0)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt((v**2).sum(-1, keepdims=True))


def test_seven_subsets_image_only_first():
    names = [combination_name(s) for s in component_combinations()]
    assert names[0] == "image" and len(names) == len(set(names)) == 7
    assert "image+description+prediction" in names and "description+prediction" in names


@pytest.mark.parametrize("subset", component_combinations(), ids=combination_name)
def test_fusion_matches_direct_formula(subset):
    n, dim, classes = 50, 16, 7
    raw = {k: rng.normal(size=(n, dim)) for k in ("image", "description", "prediction")}
    comps = {k: normalize(v) for k, v in raw.items()}
    W = unit(rng.normal(size=(classes, dim)))
    q, valid = fuse(comps, subset)
    expected_q = unit(sum(unit(raw[k]) for k in subset))
    np.testing.assert_allclose(q, expected_q, rtol=1e-5, atol=1e-6)
    assert valid.all()
    expected_logits = expected_q @ W.T
    np.testing.assert_allclose(logits(q, W), expected_logits, rtol=1e-5, atol=1e-5)
    idx, scores = top_k(logits(q, W), 5)
    np.testing.assert_array_equal(idx, np.argsort(-expected_logits, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(expected_logits, axis=1)[:, ::-1][:, :5], rtol=1e-5, atol=1e-5)


def test_missing_component_is_left_out_of_the_sum():
    dim = 8
    comps = {k: normalize(rng.normal(size=(3, dim))) for k in ("image", "description", "prediction")}
    comps["description"][1] = np.nan
    comps["image"][2] = np.nan
    comps["description"][2] = np.nan
    q, valid = fuse(comps, ("image", "description"))
    np.testing.assert_allclose(q[1], comps["image"][1], rtol=1e-6)
    assert valid.tolist() == [True, True, False]


def test_class_weights_match_direct_formulas():
    classes, dim, k = 5, 12, 9
    per_class = [rng.normal(size=(k, dim)) for _ in range(classes)]
    expected = unit(np.stack([unit(e).mean(0) for e in per_class]))
    np.testing.assert_allclose(ensemble(per_class), expected, rtol=1e-5, atol=1e-6)
    name, template, desc = (unit(rng.normal(size=(classes, dim))) for _ in range(3))
    np.testing.assert_allclose(
        sum_weights([name, template, desc]), unit(name + template + desc), rtol=1e-5, atol=1e-6
    )


def test_normalize_is_unit_length_and_keeps_direction():
    v = rng.normal(size=(4, 6)) * 10
    n = normalize(v)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(n * np.linalg.norm(v, axis=1, keepdims=True), v, rtol=1e-5)
