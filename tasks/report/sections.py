"""The report's sections, in the order a reader meets them: the benchmarks, one paper-style table per
class weighting with its paired comparison and figure, per-class accuracy and confusion, the
describer's cost, the image-only baseline against published figures, and every metrics row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from method.fusion import PAPER_WEIGHTINGS
from method.stats import LEVEL
from storage.analysis import BASELINE, average_interval
from storage.paths import partition_value
from storage.schemas import DATA_KEYS, RUN_KEYS
from tasks.evaluate import baseline_checks
from tasks.report.data import (
    COMPONENTS,
    MAX_CONFUSION_CLASSES,
    MODEL_KEYS,
    VARIANTS,
    ReportData,
    main_weighting,
    weighting_note,
    weighting_order,
)
from tasks.report.document import Doc, num, pvalue
from tasks.report.figures import MAX_CLASS_BARS, confusion_figure, gains_figure, per_class_figure
from tasks.report.leaderboard import leaderboard_section

ALPHA = 0.05


@dataclass
class Index:
    """The catalog rows of a report keyed by (run keys..., components), and what they span."""

    metrics: dict[tuple, dict]
    gains: dict[tuple, dict]
    groups: list[tuple]  # distinct encoder x describer x prompts x gen x shortlist
    weightings: list[str]
    datasets: list[tuple]  # distinct dataset x split x subset

    @classmethod
    def of(cls, data: ReportData) -> Index:
        return cls(
            metrics={(*(m[k] for k in RUN_KEYS), m["components"]): m for m in data.metrics},
            gains={(*(g[k] for k in RUN_KEYS), g["components"]): g for g in data.gains},
            groups=sorted({tuple(m[k] for k in MODEL_KEYS) for m in data.metrics}),
            weightings=sorted({m["class_weights"] for m in data.metrics}, key=weighting_order),
            datasets=sorted({tuple(m[k] for k in DATA_KEYS) for m in data.metrics}),
        )


@dataclass
class Comparison:
    """One weighting's table: the cells and averages its figure draws."""

    keyed: list[tuple]  # (dataset keys, run keys) with an image-only row
    variants: list[str]
    cell: dict = field(default_factory=dict)
    average: dict = field(default_factory=dict)


def build(data: ReportData) -> Doc:
    doc = Doc()
    index = Index.of(data)
    main = main_weighting(data.metrics) if data.metrics else "templates"
    overview_section(doc, data)
    for gi, group in enumerate(index.groups):
        prefix = f"g{gi + 1}-" if len(index.groups) > 1 else ""
        group_heading(doc, dict(zip(MODEL_KEYS, group, strict=True)), main)
        for weighting in index.weightings:
            weighting_section(doc, index, group, weighting, prefix)
        per_class_section(doc, data, index, group, main, prefix)
    cost_section(doc, data)
    baseline_section(doc, data)
    leaderboard_section(doc, data.leaderboard)
    metrics_section(doc, data)
    return doc


def overview_section(doc: Doc, data: ReportData) -> None:
    doc.heading("wdys report", 1)
    doc.para(
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the storage root `{data.root}`: "
        f"{len(data.runs)} runs (dataset x encoder x describer x class weighting). "
        f"Top-1 in percent; gains in points over the image-only baseline of the same encoder and class "
        f"weights, paired on the same images; {int(LEVEL * 100)}% paired-bootstrap intervals "
        f"({data.resamples:,} resamples, seed {data.seed}); McNemar's exact test on the discordant images. "
        f"`*` marks p < {ALPHA}."
    )
    doc.heading("Benchmarks")
    rows = [
        [b["dataset"], b["split"], b["subset"], full_split(b["subset"]), str(b["images"]), str(b["classes"])]
        for b in data.benchmarks
    ]
    doc.table(["dataset", "split", "subset", "covers", "images", "classes"], rows, right=4)


def full_split(subset: str) -> str:
    """Whether a row covers its whole split (a registered benchmark's is checked against its known
    size before the run) or a `limit` sample of it."""
    return "full split" if subset.startswith("all-") else "sample"


def group_heading(doc: Doc, keys: dict[str, str], main: str) -> None:
    doc.heading(f"Encoder `{keys['encoder']}`, describer `{keys['describer']}`")
    doc.para(
        f"Prompts `{keys['prompts']}`, generation `{keys['gen']}`, shortlist `{keys['shortlist']}`. "
        f"One table per class weighting, `{main}` first. The paper's weightings are "
        f"{', '.join(f'`{w}`' for w in PAPER_WEIGHTINGS)}; the others are extensions beyond the paper. "
        f"`excluded`: images left out of a variant because none of its components was available; "
        f"`partial`: images scored without one of the variant's components (a failed description or "
        f"prediction), from those they have (each the most of any variant in the row)."
    )


def weighting_section(doc: Doc, index: Index, group: tuple, weighting: str, prefix: str) -> None:
    keyed = [(d, (*d, *group, weighting)) for d in index.datasets]
    keyed = [(d, k) for d, k in keyed if (*k, BASELINE) in index.metrics]
    if not keyed:
        return
    variants = [v for v in VARIANTS if any((*k, v) in index.metrics for _, k in keyed)]
    doc.heading(f"Class weights `{weighting}`{weighting_note(weighting)}", 3)
    comparison = Comparison(keyed, variants)
    doc.table(
        ["dataset", "images", "excluded", "partial", f"{BASELINE} (baseline)", *variants],
        comparison_rows(index, comparison),
    )
    doc.para(
        f"Paired comparison with `{BASELINE}` (`{weighting}`): n images with a query under both, "
        f"b = baseline right and variant wrong, c = the reverse, gain = 100 (c - b) / n."
    )
    header = ["dataset", "variant", "n", "baseline top-1", "variant top-1", "gain", f"{int(LEVEL * 100)}% CI"]
    doc.table([*header, "b", "c", "McNemar p"], paired_rows(index, comparison), right=2)
    if comparison.cell:
        doc.figure(
            f"{prefix}gains-{partition_value(weighting)}.png",
            gains_figure(
                f"class weights {weighting}",
                [f"{d[0]} ({d[1]})" for d, _ in keyed],
                variants,
                comparison.cell,
                comparison.average,
            ),
            f"Gain in top-1 over image-only per dataset with its {int(LEVEL * 100)}% interval, "
            f"class weights {weighting}",
        )


def comparison_rows(index: Index, comparison: Comparison) -> list[list[str]]:
    """A row per dataset (baseline top-1, each variant's top-1 and gain) and their average; fills
    `comparison.cell` and `comparison.average` for the figure."""
    rows, base_values = [], []
    per_variant: dict[str, list] = {v: [] for v in comparison.variants}
    for d, k in comparison.keyed:
        label = f"{d[0]} ({d[1]})"
        base = index.metrics[(*k, BASELINE)]
        base_values.append(base["top1"])
        shown = [index.metrics[(*k, v)] for v in COMPONENTS if (*k, v) in index.metrics]
        excluded, partial = (max(m[column] for m in shown) for column in ("excluded", "partial"))
        row = [label, str(base["n"] + base["excluded"]), str(excluded), str(partial), num(base["top1"])]
        for v in comparison.variants:
            m, g = index.metrics.get((*k, v)), index.gains.get((*k, v))
            if m is None or g is None or m["top1"] is None or g["gain_top1"] is None:
                row.append("n/a")
                continue
            star = "*" if g["mcnemar_p"] is not None and g["mcnemar_p"] < ALPHA else ""
            row.append(f"{num(m['top1'])} ({num(g['gain_top1'], sign=True)}{star})")
            comparison.cell[(label, v)] = {"gain": g["gain_top1"], "low": g["ci_low"], "high": g["ci_high"]}
            per_variant[v].append((m["top1"], g))
        rows.append(row)
    known = [b for b in base_values if b is not None]
    average_row = ["average", "", "", num(float(np.mean(known)) if len(known) == len(base_values) else None)]
    for v in comparison.variants:
        if len(per_variant[v]) != len(comparison.keyed):
            average_row.append("n/a")
            continue
        top1 = float(np.mean([t for t, _ in per_variant[v]]))
        gain = float(np.mean([g["gain_top1"] for _, g in per_variant[v]]))
        low, high = average_interval([g for _, g in per_variant[v]])
        comparison.average[v] = {"gain": gain, "low": low, "high": high}
        average_row.append(f"{num(top1)} ({num(gain, sign=True)})")
    return [*rows, average_row]


def paired_rows(index: Index, comparison: Comparison) -> list[list[str]]:
    """Each variant against image-only on the same images, per dataset, then the averages."""
    rows = []
    for d, k in comparison.keyed:
        for v in comparison.variants:
            g = index.gains.get((*k, v))
            if g is None:
                continue
            rows.append(
                [
                    f"{d[0]} ({d[1]})",
                    v,
                    str(g["n"]),
                    num(g["base_top1"]),
                    num(g["top1"]),
                    num(g["gain_top1"], sign=True),
                    f"[{num(g['ci_low'], sign=True)}, {num(g['ci_high'], sign=True)}]",
                    str(g["b"]),
                    str(g["c"]),
                    pvalue(g["mcnemar_p"]),
                ]
            )
    if len(comparison.keyed) > 1:
        for v, a in comparison.average.items():
            interval = f"[{num(a['low'], sign=True)}, {num(a['high'], sign=True)}]"
            rows.append(["average", v, "", "", "", num(a["gain"], sign=True), interval, "", "", ""])
    return rows


def per_class_section(doc: Doc, data: ReportData, index: Index, group: tuple, main: str, prefix: str) -> None:
    doc.heading(f"Per-class accuracy (`{main}`)", 3)
    doc.para(
        f"Top-1 accuracy of each class under `{BASELINE}` and under the variant with the best top-1 on that "
        f"dataset; the confusion matrices count top-1 predictions (rows: labels)."
    )
    for d in index.datasets:
        k = (*d, *group, main)
        candidates = [
            (index.metrics[(*k, v)]["top1"], v)
            for v in VARIANTS
            if (*k, v) in index.metrics and index.metrics[(*k, v)]["top1"] is not None
        ]
        if (*k, BASELINE) in index.metrics and candidates:
            dataset_classes(
                doc, data, k, f"{d[0]} ({d[1]}), class weights {main}", max(candidates)[1], prefix
            )


def dataset_classes(doc: Doc, data: ReportData, k: tuple, title: str, best: str, prefix: str) -> None:
    """One dataset's per-class table and figure, and its confusion matrices when it has few classes."""
    rows = [r for r in data.per_class if tuple(r[x] for x in RUN_KEYS) == k]
    by = {(r["components"], r["label"]): r for r in rows}
    labels = sorted({r["label"] for r in rows})
    names = [by.get((BASELINE, c), {}).get("class_name") or str(c) for c in labels]
    base = [by.get((BASELINE, c), {}).get("top1") or 0.0 for c in labels]
    top = [by.get((best, c), {}).get("top1") or 0.0 for c in labels]
    slug = partition_value(f"{k[0]}-{k[1]}")
    if len(labels) <= MAX_CLASS_BARS:
        doc.table(
            ["class", "images", BASELINE, best, "difference"],
            [
                [n, str(by.get((BASELINE, c), {}).get("n", 0)), num(b), num(t), num(t - b, sign=True)]
                for n, c, b, t in zip(names, labels, base, top, strict=True)
            ],
        )
    doc.figure(
        f"{prefix}per-class-{slug}.png",
        per_class_figure(title, names, base, top, best),
        f"Per-class top-1 accuracy, {BASELINE} vs {best}: {title}",
    )
    conf = [r for r in data.confusion if tuple(r[x] for x in RUN_KEYS) == k]
    if not conf or len(labels) > MAX_CONFUSION_CLASSES:
        return
    position = {c: i for i, c in enumerate(labels)}
    matrices = {}
    for variant in (BASELINE, best):
        counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
        for r in conf:
            if r["components"] == variant and r["predicted"] in position and r["label"] in position:
                counts[position[r["label"]], position[r["predicted"]]] += r["images"]
        matrices[variant] = counts
    doc.figure(
        f"{prefix}confusion-{slug}.png",
        confusion_figure(title, names, matrices),
        f"Confusion matrices (top-1), {BASELINE} and {best}: {title}",
    )


def cost_section(doc: Doc, data: ReportData) -> None:
    doc.heading("Describer cost")
    if not data.cost:
        doc.para("No describer answers belong to these runs.")
        return
    doc.para(
        "Per image and kind of answer: the describer's latency and tokens (mean per image, and total). "
        "`n/a`: the describer reports no token counts (the offline profile has no tokenizer)."
    )
    header = ["dataset", "split", "describer", "kind", "images", "errors", "truncated"]
    header += ["mean latency (s)", "total latency (s)", "mean prompt tokens", "mean completion tokens"]
    header += ["total prompt tokens", "total completion tokens"]
    rows = [
        [
            c["dataset"],
            c["split"],
            c["describer"],
            c["kind"],
            str(c["images"]),
            str(c["errors"]),
            str(c.get("truncated", "n/a")),
            num(c["mean_latency_s"], 4),
            num(c["total_latency_s"], 1),
            num(c["mean_prompt_tokens"], 1),
            num(c["mean_completion_tokens"], 1),
            "n/a" if c["prompt_tokens"] is None else str(c["prompt_tokens"]),
            "n/a" if c["completion_tokens"] is None else str(c["completion_tokens"]),
        ]
        for c in data.cost
    ]
    doc.table(header, rows, right=4)


def baseline_section(doc: Doc, data: ReportData) -> None:
    checks = baseline_checks(data.metrics)
    if not checks:
        return
    doc.heading("Image-only baseline against published figures")
    doc.para(
        "open_clip's published zero-shot top-1 for the same model, tag and dataset (made with "
        "CLIP_benchmark on the full evaluation split, see storage/reference/README.md)."
    )
    for line in checks:
        doc.para(line.removeprefix("published baseline: "))


def metrics_section(doc: Doc, data: ReportData) -> None:
    doc.heading("All metrics")
    doc.para(
        "The `metrics` view's rows of this run (top-1, top-5 and mean per-class recall in percent; "
        "`partial`: images of `n` scored without one of the row's components)."
    )
    header = ["dataset", "split", "class weights", "components", "n", "excluded", "partial", "top-1", "top-5"]
    rows = [
        [
            m["dataset"],
            m["split"],
            m["class_weights"],
            m["components"],
            str(m["n"]),
            str(m["excluded"]),
            str(m["partial"]),
            num(m["top1"]),
            num(m["top5"]),
            num(m["mean_per_class_recall"]),
            num(m["gain_top1"], sign=True),
        ]
        for m in data.metrics
    ]
    doc.table([*header, "mean per-class recall", "gain"], rows, right=4)
