"""The benchmark flow end to end on real CIFAR-10 images with the offline profile, on a real
Prefect test server, and the cache rules: a rerun computes nothing; a new describer recomputes
only what depends on descriptions; a new encoder reuses the descriptions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pytest

from flows.benchmark import benchmark
from method.fusion import combination_name, component_combinations, normalize
from sources.benchmarks import EMBEDDED_DATASETS
from storage.io import read_table

ENCODER, DESCRIBER = "offline:conse-lite0-minilm", "offline:lite2-labels"


def run(root: Path, **overrides) -> dict:
    params = dict(
        datasets=["cifar10"], splits=["dev"], limit=24, sample_seed=0, shard_size=12, class_samples=1
    )
    return benchmark(root=str(root), **{**params, **overrides})


def shards(root: Path) -> dict[str, int]:
    """Result shards (not `key_values`, the lookup a run writes of what its slugs and hashes mean)."""
    paths = (p for p in root.rglob("*.parquet") if p.relative_to(root).parts[0] != "key_values")
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in paths}


def tables(paths) -> set[str]:
    return {p.split("/", 1)[0] for p in paths}


@pytest.fixture(scope="module")
def first_run(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    return root, run(root)


def test_metrics_cover_every_subset_and_weighting(first_run):
    root, result = first_run
    rows = result["metrics"]
    assert result["forward_passes"] > 0 and result["shards_cached"] == 0
    assert len(rows) == 7 * 5
    assert {r["components"] for r in rows} == {combination_name(s) for s in component_combinations()}
    for r in rows:
        assert r["n"] == 24 and r["excluded"] == 0
        assert 0 <= r["top1"] <= r["top5"] <= 100
    base = {r["class_weights"]: r["top1"] for r in rows if r["components"] == "image"}
    for r in rows:
        assert r["gain_top1"] == pytest.approx(r["top1"] - base[r["class_weights"]])


def test_duckdb_file_answers_the_printed_metrics(first_run):
    root, result = first_run
    with duckdb.connect(str(root / "wdys.duckdb"), read_only=True) as con:
        stored = con.sql("select * from metrics").to_arrow_table().to_pylist()
    key = lambda r: (r["class_weights"], r["components"])  # noqa: E731
    printed = [{k: v for k, v in r.items() if k != "published_top1"} for r in result["metrics"]]
    stored, printed = sorted(stored, key=key), sorted(printed, key=key)
    assert len(stored) == len(printed) == 35
    for a, b in zip(stored, printed, strict=True):  # floats: DuckDB may sum in another order
        assert a == pytest.approx(b)


def test_image_only_predictions_match_a_direct_computation(first_run):
    root, result = first_run
    embeddings = read_table(next(str(p) for p in root.glob("image_embeddings/**/shard-00000.parquet")))
    weights = read_table(next(str(p) for p in root.glob("class_weights/**/class_weights=name/**/*.parquet")))
    predictions = read_table(
        next(str(p) for p in root.glob("predictions/**/class_weights=name/**/shard-00000.parquet"))
    )
    image = normalize(np.array(embeddings.column("embedding").to_pylist()))
    W = np.array(weights.column("weight").to_pylist())
    expected = np.argsort(-(image @ W.T), axis=1)[:, :5]
    only_image = predictions.filter(pc.equal(predictions.column("components"), "image"))
    np.testing.assert_array_equal(np.array(only_image.column("top5").to_pylist()), expected)
    # top-1 in the metrics view equals the share of hits counted straight from the Parquet files
    hits = []
    for path in root.glob("predictions/**/class_weights=name/**/*.parquet"):
        t = read_table(str(path))
        t = t.filter(pc.equal(t.column("components"), "image"))
        hits += [
            top[0] == label
            for top, label in zip(t.column("top5").to_pylist(), t.column("label").to_pylist(), strict=True)
        ]
    row = next(r for r in result["metrics"] if r["class_weights"] == "name" and r["components"] == "image")
    assert row["top1"] == pytest.approx(100 * np.mean(hits))


def _vectors(table) -> np.ndarray:
    """(n, dim) float64 from a stored embedding column, NaN rows where it is null."""
    return np.array(
        [[np.nan] if v is None else v for v in table.column("embedding").to_pylist()], dtype=object
    )


def _unit(rows: list) -> np.ndarray:
    m = np.array(rows, dtype=np.float64)
    return m / np.linalg.norm(m, axis=-1, keepdims=True)


def test_every_prediction_is_the_fusion_of_the_stored_embeddings(first_run):
    """The paper's math recomputed from the stored shards alone, in plain NumPy (not method.fusion):
    q = n(sum of the normalised components present), scores = q . W^T, for all seven subsets under
    every weighting, against every row of `predictions`."""
    root, _ = first_run
    con = duckdb.connect(str(root / "wdys.duckdb"), read_only=True)

    def frame(sql: str) -> list[dict]:
        return con.sql(sql).to_arrow_table().to_pylist()

    images = {
        r["image_id"]: r["embedding"] for r in frame("select image_id, embedding from image_embeddings")
    }
    texts = {
        (r["kind"], r["image_id"]): r["embedding"]
        for r in frame("select kind, image_id, embedding from text_embeddings where shortlist = 'none'")
    }
    weights: dict[str, list] = {}
    for r in frame("select class_weights, class_index, weight from class_weights order by class_index"):
        weights.setdefault(r["class_weights"], []).append(r["weight"])
    predictions = frame(
        "select class_weights, components, image_id, top5, scores from predictions "
        "where describer <> 'none' and shortlist = 'none'"
    )
    assert len(predictions) == 24 * 7 * 5 and set(weights) == {
        "name",
        "template",
        "templates",
        "descriptions",
        "sum",
    }
    for p in predictions:
        parts = {
            "image": images[p["image_id"]],
            **{k: texts[(k, p["image_id"])] for k in ("description", "prediction")},
        }
        query = _unit([sum(_unit([parts[c] for c in p["components"].split("+")]))])[0]
        scores = _unit(weights[p["class_weights"]]) @ query
        best = np.argsort(-scores, kind="stable")[:5]
        assert p["top5"] == best.tolist(), p
        np.testing.assert_allclose(p["scores"], scores[best], atol=1e-5)
    con.close()


def test_rerun_computes_nothing(first_run):
    root, _ = first_run
    before = shards(root)
    again = run(root)
    assert again["forward_passes"] == 0 and again["shards_computed"] == 0 and again["shards_cached"] > 0
    assert shards(root) == before


def test_new_describer_recomputes_only_what_depends_on_descriptions(first_run):
    root, _ = first_run
    before = shards(root)
    result = run(root, describers=["offline:lite0-labels"])
    after = shards(root)
    assert all(after[p] == t for p, t in before.items())  # nothing rewritten
    new = set(after) - set(before)
    assert tables(new) == {
        "descriptions",
        "text_embeddings",
        "class_descriptions",
        "class_weights",
        "predictions",
    }
    assert all(
        "class_weights=descriptions" in p or "class_weights=sum" in p for p in new if p.startswith("class_w")
    )
    assert result["forward_passes"] > 0


def test_new_encoder_reuses_descriptions(first_run):
    root, _ = first_run
    before = shards(root)
    run(root, encoders=["offline:conse-lite2-minilm"])
    new = set(shards(root)) - set(before)
    assert tables(new) == {"image_embeddings", "text_embeddings", "class_weights", "predictions"}


def test_unknown_model_is_refused_before_anything_runs(prefect_server, tmp_path):
    with pytest.raises(ValueError, match="unknown offline encoder"):
        run(tmp_path, encoders=["offline:nope"])
    assert not list(tmp_path.rglob("*.parquet"))


def test_cli_help_documents_the_parameters():
    out = subprocess.run(
        [sys.executable, "-m", "flows.benchmark", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ},
    ).stdout
    for flag in (
        "--datasets",
        "--encoders",
        "--describers",
        "--image-only",
        "--class-weights",
        "--root",
        "--limit",
        "--shard-size",
    ):
        assert flag in out


def test_metrics_are_published_as_a_table_artifact(first_run):
    from prefect.artifacts import Artifact

    artifact = Artifact.get("wdys-metrics")
    assert artifact is not None and artifact.type == "table"
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert len(table) == 35 and {"components", "class_weights", "top1", "top5", "gain_top1"} <= set(table[0])


def test_shortlist_recomputes_only_the_guesses_and_what_follows(first_run):
    root, _ = first_run
    before = shards(root)
    result = run(root, shortlist=3)
    new = set(shards(root)) - set(before)
    assert tables(new) == {"descriptions", "text_embeddings", "predictions"}
    assert all(
        "kind=prediction" in p and "shortlist=top3-" in p for p in new if not p.startswith("predictions")
    )
    assert {r["shortlist"] for r in result["metrics"]} == {"top3"} and len(result["metrics"]) == 35
    names = json.loads((EMBEDDED_DATASETS / "cifar10" / "classes.json").read_text())
    for path in (p for p in new if p.startswith("descriptions")):
        table = read_table(str(root / path)).to_pylist()
        assert all(len(r["classes"]) == 3 for r in table)
        assert all(
            r["text"] in [names[c] for c in r["classes"]] for r in table
        )  # the guess is a listed class


def test_shortlist_larger_than_the_class_list_is_refused(prefect_server, tmp_path):
    with pytest.raises(ValueError, match="larger than the 10 classes"):
        run(tmp_path, shortlist=11)
    assert not list(tmp_path.rglob("*.parquet"))


# Last in the module: later artifact checks would otherwise read this run's artifacts.
def test_image_only_run_reuses_image_embeddings_and_matches_the_image_subset(first_run):
    root, result = first_run
    before = shards(root)
    baseline = run(root, describers=[])
    new = set(shards(root)) - set(before)
    assert tables(new) == {"predictions"}  # image embeddings and plain class weights came from the cache
    assert all("describer=none" in p for p in new)
    assert baseline["forward_passes"] == 0
    rows = baseline["metrics"]
    assert {(r["components"], r["describer"]) for r in rows} == {("image", "none")}
    assert sorted(r["class_weights"] for r in rows) == ["name", "template", "templates"]
    full = {r["class_weights"]: r for r in result["metrics"] if r["components"] == "image"}
    for r in rows:
        assert (r["n"], r["top1"], r["top5"]) == (
            24,
            full[r["class_weights"]]["top1"],
            full[r["class_weights"]]["top5"],
        )


def test_a_sum_alone_has_its_parts_computed_by_their_own_tasks(first_run, tmp_path):
    """Asked for `sum` only, the run still computes the weightings it adds up (each a task whose
    result the sum receives) and scores exactly as the run that asked for all of them."""
    _, result = first_run
    alone = run(tmp_path, class_weights=["sum"])
    assert alone["shards_computed"] == len(shards(tmp_path))  # each shard written is one task's result
    weights = [p for p in shards(tmp_path) if p.startswith("class_weights/")]
    assert sorted(p.split("class_weights=")[1].split("/")[0] for p in weights) == [
        "descriptions",
        "name",
        "sum",
        "template",
    ]
    score = {(r["components"], r["top1"], r["top5"]) for r in alone["metrics"]}
    assert score == {
        (r["components"], r["top1"], r["top5"]) for r in result["metrics"] if r["class_weights"] == "sum"
    }


def test_renaming_a_class_recomputes_what_the_names_go_into(prefect_server, tmp_path):
    """A user's Parquet dataset whose `classes.json` renames a class (the same images): class
    descriptions, class weights, initial-prediction answers (their prompt lists the names), their
    embeddings and the predictions are computed again; the manifest, the image embeddings and the
    descriptions with their embeddings are read from the cache, untouched."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    data = tmp_path / "pets"
    data.mkdir()
    pictures = []
    for i in range(8):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (30 * i, 200 - 20 * i, 90)).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    table = pa.table({"image": pa.array(pictures, pa.binary()), "label": pa.array([i % 2 for i in range(8)])})
    pq.write_table(table, data / "test.parquet")
    (data / "classes.json").write_text(json.dumps(["cat", "dog"]))
    params = dict(datasets=[f"parquet:{data}"], splits=["test"], limit=None, sample_seed=None, shard_size=4)
    root = tmp_path / "root"
    run(root, **params)
    before = shards(root)

    (data / "classes.json").write_text(json.dumps(["cat", "puppy"]))
    result = run(root, **params)

    after = shards(root)
    assert all(after[p] == t for p, t in before.items())  # nothing rewritten
    new = set(after) - set(before)
    assert tables(new) == {
        "class_descriptions",
        "class_weights",
        "descriptions",
        "text_embeddings",
        "predictions",
    }
    answers = [p for p in new if p.startswith(("descriptions/", "text_embeddings/"))]
    assert answers and all("kind=prediction" in p for p in answers)
    assert len([p for p in new if p.startswith("predictions/")]) == 2 * 5  # 2 shards x 5 weightings
    assert len([p for p in new if p.startswith("class_weights/")]) == 5
    # read from the cache: per shard, its manifest, image embeddings, descriptions and their embeddings
    reused = [
        p for p in before if p.startswith(("manifest/", "image_embeddings/")) or "kind=description" in p
    ]
    assert len(reused) == 2 * 4 and result["shards_cached"] == len(reused)
    assert result["shards_computed"] == len(new)
    (weights,) = [p for p in new if p.startswith("class_weights/") and "class_weights=name/" in p]
    assert read_table(str(root / weights)).column("class_name").to_pylist() == ["cat", "puppy"]
