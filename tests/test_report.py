"""Evaluation beyond accuracy and the report, on a synthetic storage root whose per-image hits are
known: the DuckDB views (gains, per_class, confusion, benchmarks, describer_cost) against direct
NumPy / SciPy computations, the paired bootstrap against its closed-form moments and an image-level
bootstrap, and the report's files and artifacts."""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from method import stats
from method.prompts import image_prompts_hash
from sources.registry import list_benchmarks
from storage.analysis import run_rows, with_intervals
from storage.catalog import create_views
from storage.io import write_table
from storage.keys import answer_prompts_hash, classes_key
from storage.paths import shard_path
from storage.schemas import CLASS_WEIGHTS, DESCRIPTIONS, MANIFEST, PREDICTIONS, RUN_KEYS
from tasks.report import pvalue, write_report

CLASSES = ["cat", "dog", "ship", "truck", "frog"]
N, SHARD = 400, 200
DATA = {"dataset": "toy", "split": "test", "subset": "all-shard200"}
RUN = {
    **DATA,
    "classes": classes_key(CLASSES),
    "encoder": "e",
    "describer": "d",
    "prompts": image_prompts_hash(),
    "gen": "g",
    "shortlist": "none",
}
KIND_PROMPTS = {kind: answer_prompts_hash(kind, RUN["classes"]) for kind in ("description", "prediction")}
# Hit probability of each component subset; `description` leaves the images in EXCLUDED without a query.
RATES = {"image": 0.55, "image+description": 0.62, "description": 0.5, "image+description+prediction": 0.56}
EXCLUDED = set(range(0, N, 40))


def synthetic_root(root: str) -> dict:
    """Write manifest, class weights, descriptions and predictions shards; return the known truth."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, len(CLASSES), N)
    ids = [f"test/{i}" for i in range(N)]
    hits = {c: rng.random(N) < p for c, p in RATES.items()}
    # a miss predicts a wrong class that depends on the image, so the confusion matrix is not trivial
    wrong = (labels + 1 + rng.integers(0, len(CLASSES) - 1, N)) % len(CLASSES)
    top1 = {c: np.where(h, labels, wrong) for c, h in hits.items()}
    for s in range(N // SHARD):
        rows = slice(s * SHARD, (s + 1) * SHARD)
        manifest = {
            "image_id": ids[rows],
            "row": list(range(s * SHARD, (s + 1) * SHARD)),
            "label": labels[rows].tolist(),
            "image": [None] * SHARD,
            "uri": [f"file:///x/{i}.png" for i in ids[rows]],
        }
        write_table(shard_path(root, MANIFEST, DATA, s), pa.table(manifest, schema=MANIFEST.schema()))
        columns = {"image_id": [], "label": [], "components": [], "top5": [], "scores": []}
        for c in RATES:
            for i in range(s * SHARD, (s + 1) * SHARD):
                columns["image_id"].append(ids[i])
                columns["label"].append(int(labels[i]))
                columns["components"].append(c)
                excluded = c == "description" and i in EXCLUDED
                first = int(top1[c][i])
                rest = [k for k in range(len(CLASSES)) if k != first]
                columns["top5"].append(None if excluded else [first, *rest])
                columns["scores"].append(None)
        for weighting in ("templates", "name"):  # `name`: the same hits, a second table in the report
            keys = {**RUN, "class_weights": weighting}
            write_table(
                shard_path(root, PREDICTIONS, keys, s), pa.table(columns, schema=PREDICTIONS.schema())
            )
        for kind, tokens in (("description", True), ("prediction", False)):
            keys = {
                **DATA,
                "describer": "d",
                "kind": kind,
                "prompts": KIND_PROMPTS[kind],
                "gen": "g",
                "shortlist": "none",
            }
            n = SHARD
            answers = {
                "image_id": ids[rows],
                "text": [None if i % 50 == 0 else "a photo" for i in range(n)],
                "latency_s": [0.5] * n,
                "prompt_tokens": [100 + i % 3 for i in range(n)] if tokens else [None] * n,
                "completion_tokens": [20] * n if tokens else [None] * n,
                "error": ["boom" if i % 50 == 0 else None for i in range(n)],
                "classes": [None] * n,
                "truncated": [False] * n,
            }
            write_table(
                shard_path(root, DESCRIPTIONS, keys, s), pa.table(answers, schema=DESCRIPTIONS.schema())
            )
    for weighting in ("templates", "name"):
        keys = {"dataset": "toy", "classes": RUN["classes"], "encoder": "e", "class_weights": weighting}
        keys |= {"describer": "none"}
        keys |= {"prompts": "none", "gen": "none"}
        weights = {
            "class_index": list(range(len(CLASSES))),
            "class_name": CLASSES,
            "weight": pa.FixedSizeListArray.from_arrays(
                pa.array(np.eye(len(CLASSES), dtype=np.float32).ravel()), 5
            ),
            "texts": [1] * len(CLASSES),
            "truncated": [0] * len(CLASSES),
        }
        write_table(
            shard_path(root, CLASS_WEIGHTS, keys, 0), pa.table(weights, schema=CLASS_WEIGHTS.schema(5))
        )
    return {"labels": labels, "hits": hits, "top1": top1}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy"))
    truth = synthetic_root(root)
    con = duckdb.connect()
    made = create_views(con, root, list_benchmarks())
    yield root, truth, con, made
    con.close()


def test_views_are_made(toy):
    _, _, _, made = toy
    assert {"class_names", "benchmarks", "describer_cost", "per_class", "confusion", "gains"} <= set(made)


def test_mcnemar_exact_p_by_hand_and_against_scipy():
    # b=1, c=5: P[X <= 1] for X ~ Bin(6, 1/2) = 7/64, two-sided 14/64
    assert stats.mcnemar_exact_p(1, 5) == pytest.approx(14 / 64)
    assert stats.mcnemar_exact_p(5, 1) == pytest.approx(14 / 64)
    assert stats.mcnemar_exact_p(0, 0) == 1.0 and stats.mcnemar_exact_p(7, 7) == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in [(3, 10), (120, 160), (2000, 2100), (40, 0)]:
        assert stats.mcnemar_exact_p(b, c) == pytest.approx(
            scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9
        )


def test_gains_view_matches_a_direct_paired_computation(toy):
    root, truth, con, _ = toy
    rows = run_rows(con, "gains", [{**RUN, "class_weights": "templates"}])
    assert {r["components"] for r in rows} == set(RATES) - {"image"}
    base = truth["hits"]["image"]
    for r in rows:
        variant = truth["hits"][r["components"]]
        both = np.ones(N, bool)
        if r["components"] == "description":
            both[list(EXCLUDED)] = False
        b = int((base & ~variant & both).sum())
        c = int((variant & ~base & both).sum())
        assert (r["n"], r["b"], r["c"]) == (both.sum(), b, c)
        assert r["base_top1"] == pytest.approx(100 * base[both].mean())
        assert r["top1"] == pytest.approx(100 * variant[both].mean())
        assert r["gain_top1"] == pytest.approx(100 * (variant[both].mean() - base[both].mean()))
        assert r["mcnemar_p"] == pytest.approx(stats.mcnemar_exact_p(b, c), rel=1e-9)
        scipy_stats = pytest.importorskip("scipy.stats")
        assert r["mcnemar_p"] == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_paired_bootstrap_matches_its_moments_and_an_image_level_bootstrap(toy):
    root, truth, con, _ = toy
    row = next(
        r
        for r in run_rows(con, "gains", [{**RUN, "class_weights": "templates"}])
        if r["components"] == "image+description"
    )
    n, b, c = row["n"], row["b"], row["c"]
    draws = stats.bootstrap_gains(n, b, c, 40_000, seed=1)
    # the resampled gain's exact mean and variance: 100 (C - B) / n with (B, C) multinomial
    pb, pc = b / n, c / n
    assert draws.mean() == pytest.approx(100 * (pc - pb), abs=0.05)
    assert draws.var() == pytest.approx(1e4 * (pb + pc - (pc - pb) ** 2) / n, rel=0.03)
    # an image-level bootstrap: resample the images' hit differences with replacement
    diff = truth["hits"]["image+description"].astype(int) - truth["hits"]["image"].astype(int)
    rng = np.random.default_rng(2)
    direct = np.array([100 * diff[rng.integers(0, n, n)].mean() for _ in range(4000)])
    low, high = stats.paired_bootstrap_ci(n, b, c, 20_000, seed=3)
    assert low == pytest.approx(np.quantile(direct, 0.025), abs=0.5)
    assert high == pytest.approx(np.quantile(direct, 0.975), abs=0.5)
    assert low < row["gain_top1"] < high
    # seeded per compared pair: the same interval whatever else is in the query, every time
    again = with_intervals([row], resamples=2000)[0]
    assert (again["ci_low"], again["ci_high"]) == stats.paired_bootstrap_ci(
        n, b, c, 2000, stats.run_seed(0, [row[k] for k in (*RUN_KEYS, "components")])
    )
    assert with_intervals([row], resamples=2000)[0]["ci_low"] == again["ci_low"]


def test_per_class_and_confusion_match_direct_counts(toy):
    _, truth, con, _ = toy
    run = [{**RUN, "class_weights": "templates"}]
    per_class = {(r["components"], r["label"]): r for r in run_rows(con, "per_class", run)}
    confusion = run_rows(con, "confusion", run)
    labels = truth["labels"]
    for comp, hits in truth["hits"].items():
        valid = np.ones(N, bool)
        if comp == "description":
            valid[list(EXCLUDED)] = False
        for k, name in enumerate(CLASSES):
            r = per_class[(comp, k)]
            mine = labels == k
            assert r["class_name"] == name
            assert (r["n"], r["excluded"]) == ((mine & valid).sum(), (mine & ~valid).sum())
            assert r["correct1"] == (mine & valid & hits).sum()
            assert r["top1"] == pytest.approx(100 * hits[mine & valid].mean())
            assert r["correct5"] == (mine & valid).sum()  # every class is in the top 5 of 5
        counts = {(r["label"], r["predicted"]): r["images"] for r in confusion if r["components"] == comp}
        for k in range(len(CLASSES)):
            for p in range(len(CLASSES)):
                expected = int(((labels == k) & (truth["top1"][comp] == p) & valid).sum())
                assert counts.get((k, p), 0) == expected
            assert counts.get((k, None), 0) == int(((labels == k) & ~valid).sum())


def test_metrics_count_partial_queries(toy):
    """An image without its description still has an `image+description` query (its image alone):
    counted in `n` and in `partial`; where it has no component at all it is `excluded` instead."""
    _, _, con, _ = toy
    rows = {r["components"]: r for r in run_rows(con, "metrics", [{**RUN, "class_weights": "templates"}])}
    for components, r in rows.items():
        lacking = "description" in components and components != "description"
        assert r["partial"] == (len(EXCLUDED) if lacking else 0), components
        assert r["excluded"] == (len(EXCLUDED) if components == "description" else 0), components
        assert r["n"] + r["excluded"] == N


def test_benchmarks_and_describer_cost(toy):
    _, _, con, _ = toy
    rows = con.sql("select dataset, split, subset, images, classes, registered from benchmarks").fetchall()
    assert rows[0] == ("toy", "test", "all-shard200", N, len(CLASSES), False)
    registered = {(b.name, b.split, None, None, b.num_classes, True) for b in list_benchmarks()}
    assert set(rows[1:]) == registered and len(rows) == 1 + len(registered)  # not ingested: no images
    cost = {r["kind"]: r for r in con.sql("select * from describer_cost").to_arrow_table().to_pylist()}
    d, p = cost["description"], cost["prediction"]
    assert d["images"] == p["images"] == N and d["errors"] == N // 50
    assert d["mean_latency_s"] == pytest.approx(0.5) and d["total_latency_s"] == pytest.approx(0.5 * N)
    assert d["prompt_tokens"] == sum(100 + i % 3 for i in range(SHARD)) * (N // SHARD)
    assert d["completion_tokens"] == 20 * N and d["tokens_counted"] == N
    # no tokenizer: the counts stay null rather than becoming zero
    assert p["prompt_tokens"] is None and p["mean_prompt_tokens"] is None and p["tokens_counted"] == 0


def test_report_files_hold_the_table_numbers(toy, tmp_path):
    root, truth, con, _ = toy
    runs = [{**RUN, "class_weights": w} for w in ("templates", "name")]
    out, doc, data = write_report(root, runs, out=str(tmp_path / "report"), resamples=2000)
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"report.md", "report.html", "gains-templates.png", "gains-name.png"} <= files
    assert {"per-class-toy-test.png", "confusion-toy-test.png"} <= files
    for name in files - {"report.md", "report.html"}:
        assert (tmp_path / "report" / name).read_bytes().startswith(b"\x89PNG")
    md = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    assert md.index("`templates`") < md.index("`name`")  # the main comparison first
    base = 100 * truth["hits"]["image"].mean()
    g = next(
        r for r in data.gains if r["class_weights"] == "templates" and r["components"] == "image+description"
    )
    star = "*" if g["mcnemar_p"] < 0.05 else ""
    cell = f"{100 * truth['hits']['image+description'].mean():.2f} ({g['gain_top1']:+.2f}{star})"
    interval = f"[{g['ci_low']:+.2f}, {g['ci_high']:+.2f}]"
    for text in (md, html):
        assert f"{base:.2f}" in text and cell in text and interval in text
        assert pvalue(g["mcnemar_p"]) in text
    assert "](gains-templates.png)" in md and 'src="gains-templates.png"' in html  # relative links
    assert "| toy | test | all-shard200 | full split | 400 | 5 |" in md
    assert "| toy (test) | 400 | 10 | 10 |" in md  # excluded, partial: the images without a description
    assert "n/a" in md  # the prediction answers have no token counts


def test_report_survives_a_variant_with_no_query_and_says_so(tmp_path):
    """Every answer failed: a variant's top-1 is NULL in `metrics`. The report must still be written,
    with the excluded images in its table and `n/a` where there is no number."""
    root = str(tmp_path / "root")
    labels = [0, 1, 0, 1]
    manifest = {
        "image_id": [f"test/{i}" for i in range(4)],
        "row": list(range(4)),
        "label": labels,
        "image": [None] * 4,
        "uri": [f"file:///x/{i}.png" for i in range(4)],
    }
    write_table(shard_path(root, MANIFEST, DATA, 0), pa.table(manifest, schema=MANIFEST.schema()))
    columns = {"image_id": [], "label": [], "components": [], "top5": [], "scores": []}
    answers = {  # image: all right; description: no query at all; prediction: the first two right
        "image": [[label, 1 - label] for label in labels],
        "description": [None] * 4,
        "prediction": [[label, 1 - label] if i < 2 else [1 - label, label] for i, label in enumerate(labels)],
    }
    for components, top5 in answers.items():
        columns["image_id"] += [f"test/{i}" for i in range(4)]
        columns["label"] += labels
        columns["components"] += [components] * 4
        columns["top5"] += top5
        columns["scores"] += [None] * 4
    run = {**RUN, "class_weights": "descriptions"}
    write_table(shard_path(root, PREDICTIONS, run, 0), pa.table(columns, schema=PREDICTIONS.schema()))

    _, _, data = write_report(root, [run], out=str(tmp_path / "report"), resamples=100)

    (description,) = [m for m in data.metrics if m["components"] == "description"]
    assert description["top1"] is None and description["excluded"] == 4
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| toy (test) | 4 | 4 | 0 | 100.00 | n/a | 50.00 (-50.00) |" in md
    assert "(an extension beyond the paper)" not in md  # `descriptions` is one of the paper's


def test_report_task_publishes_artifacts(prefect_server, toy, tmp_path):
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.report import report

    root = toy[0]

    @flow
    def report_only() -> str:
        return report(root, [{**RUN, "class_weights": "templates"}], resamples=500)

    out = report_only()
    assert out.startswith(f"{root}/reports/")
    markdown = Artifact.get("wdys-report")
    assert markdown is not None and markdown.type == "markdown" and out in markdown.data
    table = Artifact.get("wdys-gains")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 3 and {"gain_top1", "ci_low", "ci_high", "mcnemar_p"} <= set(rows[0])
    assert all(math.isfinite(r["ci_low"]) for r in rows)
