"""A report per run: the paper-style table, the gains over image-only with their 95% paired-bootstrap
intervals and McNemar p-values, per-class accuracy, confusion matrices and the describer's cost,
as `report.md` and `report.html` with PNG figures next to them, under `<root>/reports/<name>/`
(any fsspec root: every file is written as bytes). The `report` task also publishes the Markdown
and the gains table as Prefect artifacts (`wdys-report`, `wdys-gains`).

    python -m tasks.report --root /tmp/wdys-c10/root --dataset cifar10 --split test [--out DIR]

The command line reports every run in the catalog of the named datasets and splits (narrow it with
--encoder, --describer, --class-weights, --subset) and writes without Prefect; `--out` writes to
another folder (any fsspec URL) instead of `<root>/reports/<UTC time>`.

Tables: one per class weighting (and per encoder x describer, when a run has several), the
`templates` weighting first: CLIP's usual zero-shot baseline with its 80 prompt templates. The
paper's weightings are `name`, `template` and `descriptions`; `templates` and `sum` are extensions
beyond the paper and are labelled so wherever they appear. Rows are datasets and their average;
columns the images, the most excluded by any variant, the image-only baseline's top-1 and each
variant's top-1 with its gain in points over the baseline on the same images.
"""

from __future__ import annotations

import argparse
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE

from method.fusion import CLASS_WEIGHTINGS, PAPER_WEIGHTINGS, component_subsets, subset_name
from method.prompts import DESCRIPTION_PROMPT, PREDICTION_PROMPT, content_hash, image_prompts_hash
from method.stats import LEVEL, RESAMPLES
from storage.analysis import ANSWER_KEYS, BASELINE, average_interval, run_rows, with_intervals
from storage.catalog import RUN_KEYS, connect, refresh_catalog
from storage.io import filesystem
from storage.paths import NONE, partition_value, resolve_root
from tasks.evaluate import baseline_checks, with_published

MAIN_WEIGHTING = "templates"
DATA_KEYS = ("dataset", "split", "subset")
MODEL_KEYS = ("encoder", "describer", "prompts", "gen", "shortlist")
COMPONENTS = [subset_name(s) for s in component_subsets()]
VARIANTS = [c for c in COMPONENTS if c != BASELINE]
MAX_CONFUSION_CLASSES = 20  # a confusion matrix figure only for datasets with this many classes or fewer
MAX_CLASS_BARS = 40  # above this many classes, per-class accuracy is drawn as a sorted difference curve
ALPHA = 0.05
GAINS_SHOWN = ("dataset", "split", "encoder", "describer", "class_weights", "components", "n", "base_top1")
GAINS_SHOWN += ("top1", "gain_top1", "ci_low", "ci_high", "b", "c", "mcnemar_p")


# ---------------------------------------------------------------------------------------------
# The data of a report, read from the catalog


@dataclass
class ReportData:
    runs: list[dict[str, str]]
    metrics: list[dict]
    gains: list[dict]
    per_class: list[dict]
    confusion: list[dict]
    cost: list[dict]
    benchmarks: list[dict]
    root: str = ""
    resamples: int = RESAMPLES
    seed: int = 0


def answer_keys(run: dict[str, str]) -> list[dict[str, str]]:
    """The `descriptions` keys of a run's two kinds of answer (the current prompts' hashes)."""
    if partition_value(run["describer"]) == NONE:
        return []
    prompts = {"description": content_hash(DESCRIPTION_PROMPT), "prediction": content_hash(PREDICTION_PROMPT)}
    if run["prompts"] != image_prompts_hash():
        return []  # answers of older prompts: their per-kind hashes cannot be told from here
    keys = []
    for kind, prompt in prompts.items():
        shortlist = run.get("shortlist", NONE)
        if kind == "description" or shortlist == NONE:
            shortlist = NONE
        else:
            shortlist = f"{shortlist}-{partition_value(run['encoder'])}"
        keys.append(
            {
                **{k: run[k] for k in ("dataset", "split", "subset", "describer", "gen")},
                "kind": kind,
                "prompts": prompt,
                "shortlist": shortlist,
            }
        )
    return keys


def collect(root: str, runs: list[dict[str, str]], resamples: int = RESAMPLES, seed: int = 0) -> ReportData:
    database = refresh_catalog(root)
    with connect(root, database, read_only=True) as con:
        views = {
            r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()
        }

        def rows(view: str, wanted: list[dict], keys: Sequence[str] = RUN_KEYS) -> list[dict]:
            return run_rows(con, view, wanted, keys) if view in views else []

        benchmarks = rows("benchmarks", runs, DATA_KEYS)
        classes = {(b["dataset"], b["split"], b["subset"]): b["classes"] for b in benchmarks}
        main = [r for r in runs if r["class_weights"] == main_weighting(runs)]
        small = [
            r
            for r in main
            if classes.get(tuple(partition_value(r[k]) for k in DATA_KEYS), 0) <= MAX_CONFUSION_CLASSES
        ]
        return ReportData(
            runs=runs,
            metrics=with_published(con, rows("metrics", runs)) if "metrics" in views else [],
            gains=with_intervals(rows("gains", runs), resamples, seed),
            per_class=rows("per_class", main),
            confusion=rows("confusion", small),
            cost=rows("describer_cost", [k for r in runs for k in answer_keys(r)], ANSWER_KEYS),
            benchmarks=benchmarks,
            root=root,
            resamples=resamples,
            seed=seed,
        )


def main_weighting(runs: Sequence[dict[str, str]]) -> str:
    present = {r["class_weights"] for r in runs}
    if MAIN_WEIGHTING in present or not present:
        return MAIN_WEIGHTING
    return min(present, key=weighting_order)


# ---------------------------------------------------------------------------------------------
# A tiny document model, rendered to Markdown and to HTML


@dataclass
class Doc:
    blocks: list[tuple] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]], right: int = 1) -> None:
        """`right`: columns from this index on are numbers, aligned right."""
        self.blocks.append(("table", header, rows, right))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.figures[name] = png
        self.blocks.append(("img", name, caption))

    def markdown(self, figure_prefix: str | None = "") -> str:
        """`figure_prefix` None lists figures by path instead of embedding them (Prefect artifacts)."""
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"{'#' * block[1]} {block[2]}")
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                _, header, rows, right = block
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("| " + " | ".join(cell(h) for h in header) + " |")
                out.append(
                    "| " + " | ".join("---:" if i >= right else "---" for i in range(len(header))) + " |"
                )
                out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
            elif kind == "img":
                _, name, caption = block
                if figure_prefix is None:
                    out.append(f"*Figure `{name}`: {caption}*")
                else:
                    out.append(f"![{caption}]({figure_prefix}{name})\n\n*{caption}*")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        out = [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
            "th,td{border:1px solid #ccc;padding:3px 8px}th{background:#f3f3f3}td.n{text-align:right}"
            "img{max-width:100%}figcaption{font-style:italic}"
            "code{background:#f3f3f3}</style></head><body>",
        ]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"<h{block[1]}>{inline_html(block[2])}</h{block[1]}>")
            elif kind == "p":
                out.append(f"<p>{inline_html(block[1])}</p>")
            elif kind == "table":
                _, header, rows, right = block
                out.append(
                    "<table><thead><tr>"
                    + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                    + "</tr></thead><tbody>"
                )
                for r in rows:
                    cells = (
                        f'<td class="n">{html.escape(str(c))}</td>'
                        if i >= right
                        else f"<td>{html.escape(str(c))}</td>"
                        for i, c in enumerate(r)
                    )
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</tbody></table>")
            elif kind == "img":
                _, name, caption = block
                name, caption = html.escape(name), html.escape(caption)
                out.append(
                    f'<figure><img src="{name}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'
                )
        out.append("</body></html>")
        return "\n".join(out)


def inline_html(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only inline Markdown the report uses)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


# ---------------------------------------------------------------------------------------------
# Numbers and figures


def num(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def pvalue(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<1e-300" if p == 0 else (f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}")


def label_of(row: dict) -> str:
    return f"{row['dataset']} ({row['split']})"


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def new_figure(width: float, height: float):
    # the object-oriented API with the Agg canvas: no pyplot, no global backend, safe in threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def gains_figure(title: str, datasets: list[str], variants: list[str], cell: dict, average: dict) -> bytes:
    """Gain per dataset (and the average) with its interval, one marker per variant."""
    single = len(datasets) == 1  # one dataset: the variants along the x axis
    labels = datasets if single else [*datasets, "average"]
    fig = new_figure(6.0 if single else max(6.0, 0.4 * len(labels) * max(1, len(variants))), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for i, label in enumerate(labels):
            g = average.get(variant) if label == "average" else cell.get((label, variant))
            if g is None:
                continue
            xs.append(j if single else i - 0.4 + width * (j + 0.5))
            ys.append(g["gain"])
            lo.append(g["gain"] - g["low"])
            hi.append(g["high"] - g["gain"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, color=f"C{j}", label=variant)
    ax.axhline(0, color="grey", lw=0.8)
    if single:
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
        title = f"{datasets[0]}, {title}"
    else:
        ax.set_xticks(range(len(labels)), labels)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_ylabel("gain in top-1 over image-only (points)")
    ax.set_title(f"{title}: gain over image-only, {int(LEVEL * 100)}% paired-bootstrap interval", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def per_class_figure(
    title: str, names: list[str], base: list[float], best: list[float], variant: str
) -> bytes:
    if len(names) <= MAX_CLASS_BARS:
        fig = new_figure(7.0, 0.8 + 0.32 * len(names))
        ax = fig.add_subplot()
        y = np.arange(len(names))
        ax.barh(y - 0.2, base, height=0.4, label=BASELINE, color="C7")
        ax.barh(y + 0.2, best, height=0.4, label=variant, color="C0")
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel("top-1 accuracy of the class (%)")
        ax.set_xlim(0, 100)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        fig = new_figure(7.0, 3.5)
        ax = fig.add_subplot()
        diff = np.sort(np.asarray(best) - np.asarray(base))[::-1]
        ax.plot(np.arange(len(diff)), diff, color="C0")
        ax.fill_between(np.arange(len(diff)), diff, 0, alpha=0.3, color="C0")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"classes, sorted ({len(names)})")
        ax.set_ylabel(f"{variant} minus {BASELINE} (points)")
    ax.set_title(title, fontsize=10)
    return png(fig)


def confusion_figure(title: str, names: list[str], matrices: dict[str, np.ndarray]) -> bytes:
    k = len(names)
    fig = new_figure(5.2 * len(matrices), 0.9 + 0.4 * k)
    for i, (variant, counts) in enumerate(matrices.items()):
        ax = fig.add_subplot(1, len(matrices), i + 1)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        if k <= 12:
            for r in range(k):
                for c in range(k):
                    ax.text(
                        c,
                        r,
                        int(counts[r, c]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[r, c] > 0.5 else "black",
                    )
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names if i == 0 else [""] * k, fontsize=8)
        ax.set_xlabel("predicted (top-1)")
        if i == 0:
            ax.set_ylabel("label")
        ax.set_title(variant, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return png(fig)


# ---------------------------------------------------------------------------------------------
# The report


def build(data: ReportData) -> Doc:
    doc = Doc()
    metrics = {(*(m[k] for k in RUN_KEYS), m["components"]): m for m in data.metrics}
    gains = {(*(g[k] for k in RUN_KEYS), g["components"]): g for g in data.gains}
    groups = sorted({tuple(m[k] for k in MODEL_KEYS) for m in data.metrics})
    weightings = sorted({m["class_weights"] for m in data.metrics}, key=weighting_order)
    main = main_weighting(data.metrics) if data.metrics else MAIN_WEIGHTING
    datasets = sorted({tuple(m[k] for k in DATA_KEYS) for m in data.metrics})

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
    doc.table(
        ["dataset", "split", "subset", "images", "classes"],
        [
            [b["dataset"], b["split"], b["subset"], str(b["images"]), str(b["classes"])]
            for b in data.benchmarks
        ],
        right=3,
    )
    for gi, group in enumerate(groups):
        gkeys = dict(zip(MODEL_KEYS, group, strict=True))
        prefix = f"g{gi + 1}-" if len(groups) > 1 else ""
        doc.heading(f"Encoder `{gkeys['encoder']}`, describer `{gkeys['describer']}`")
        doc.para(
            f"Prompts `{gkeys['prompts']}`, generation `{gkeys['gen']}`, shortlist `{gkeys['shortlist']}`. "
            f"One table per class weighting, `{main}` first. The paper's weightings are "
            f"{', '.join(f'`{w}`' for w in PAPER_WEIGHTINGS)}; the others are extensions beyond the paper. "
            f"`excluded`: images left out of a variant because none of its components was available "
            f"(the most of any variant in the row)."
        )
        for weighting in weightings:
            keyed = [(d, (*d, *group, weighting)) for d in datasets]
            keyed = [(d, k) for d, k in keyed if (*k, BASELINE) in metrics]
            if not keyed:
                continue
            variants = [v for v in VARIANTS if any((*k, v) in metrics for _, k in keyed)]
            doc.heading(f"Class weights `{weighting}`{weighting_note(weighting)}", 3)
            header = ["dataset", "images", "excluded", f"{BASELINE} (baseline)", *variants]
            rows, cell, per_variant = [], {}, {v: [] for v in variants}
            base_values = []
            for d, k in keyed:
                label = f"{d[0]} ({d[1]})"
                base = metrics[(*k, BASELINE)]
                base_values.append(base["top1"])
                excluded = max(metrics[(*k, v)]["excluded"] for v in COMPONENTS if (*k, v) in metrics)
                row = [label, str(base["n"] + base["excluded"]), str(excluded), num(base["top1"])]
                for v in variants:
                    m, g = metrics.get((*k, v)), gains.get((*k, v))
                    if m is None or g is None or m["top1"] is None or g["gain_top1"] is None:
                        row.append("n/a")
                        continue
                    star = "*" if g["mcnemar_p"] is not None and g["mcnemar_p"] < ALPHA else ""
                    row.append(f"{num(m['top1'])} ({num(g['gain_top1'], sign=True)}{star})")
                    cell[(label, v)] = {"gain": g["gain_top1"], "low": g["ci_low"], "high": g["ci_high"]}
                    per_variant[v].append((m["top1"], g))
                rows.append(row)
            average = {}
            known = [b for b in base_values if b is not None]
            average_base = float(np.mean(known)) if len(known) == len(base_values) else None
            avg_row = ["average", "", "", num(average_base)]
            for v in variants:
                if len(per_variant[v]) != len(keyed):
                    avg_row.append("n/a")
                    continue
                top1 = float(np.mean([t for t, _ in per_variant[v]]))
                gain = float(np.mean([g["gain_top1"] for _, g in per_variant[v]]))
                low, high = average_interval([g for _, g in per_variant[v]])
                average[v] = {"gain": gain, "low": low, "high": high}
                avg_row.append(f"{num(top1)} ({num(gain, sign=True)})")
            doc.table(header, [*rows, avg_row])
            detail = []
            for d, k in keyed:
                for v in variants:
                    g = gains.get((*k, v))
                    if g is None:
                        continue
                    detail.append(
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
            if len(keyed) > 1:
                for v, a in average.items():
                    detail.append(
                        [
                            "average",
                            v,
                            "",
                            "",
                            "",
                            num(a["gain"], sign=True),
                            f"[{num(a['low'], sign=True)}, {num(a['high'], sign=True)}]",
                            "",
                            "",
                            "",
                        ]
                    )
            doc.para(
                f"Paired comparison with `{BASELINE}` (`{weighting}`): n images with a query under both, "
                f"b = baseline right and variant wrong, c = the reverse, gain = 100 (c - b) / n."
            )
            doc.table(
                [
                    "dataset",
                    "variant",
                    "n",
                    "baseline top-1",
                    "variant top-1",
                    "gain",
                    f"{int(LEVEL * 100)}% CI",
                    "b",
                    "c",
                    "McNemar p",
                ],
                detail,
                right=2,
            )
            if cell:
                doc.figure(
                    f"{prefix}gains-{partition_value(weighting)}.png",
                    gains_figure(
                        f"class weights {weighting}",
                        [f"{d[0]} ({d[1]})" for d, _ in keyed],
                        variants,
                        cell,
                        average,
                    ),
                    f"Gain in top-1 over image-only per dataset with its {int(LEVEL * 100)}% interval, "
                    f"class weights {weighting}",
                )
        per_class_section(doc, data, group, main, datasets, metrics, prefix)
    cost_section(doc, data)
    checks = baseline_checks(data.metrics)
    if checks:
        doc.heading("Image-only baseline against published figures")
        doc.para(
            "open_clip's published zero-shot top-1 for the same model, tag and dataset (made with "
            "CLIP_benchmark on the full evaluation split, see storage/reference/README.md)."
        )
        for line in checks:
            doc.para(line.removeprefix("published baseline: "))
    doc.heading("All metrics")
    doc.para("The `metrics` view's rows of this run (top-1, top-5 and mean per-class recall in percent).")
    doc.table(
        [
            "dataset",
            "split",
            "class weights",
            "components",
            "n",
            "excluded",
            "top-1",
            "top-5",
            "mean per-class recall",
            "gain",
        ],
        [
            [
                m["dataset"],
                m["split"],
                m["class_weights"],
                m["components"],
                str(m["n"]),
                str(m["excluded"]),
                num(m["top1"]),
                num(m["top5"]),
                num(m["mean_per_class_recall"]),
                num(m["gain_top1"], sign=True),
            ]
            for m in data.metrics
        ],
        right=4,
    )
    return doc


def weighting_note(weighting: str) -> str:
    return "" if weighting in PAPER_WEIGHTINGS else " (an extension beyond the paper)"


def weighting_order(w: str) -> tuple[int, int]:
    return (
        w != MAIN_WEIGHTING,
        CLASS_WEIGHTINGS.index(w) if w in CLASS_WEIGHTINGS else len(CLASS_WEIGHTINGS),
    )


def per_class_section(
    doc: Doc, data: ReportData, group: tuple, main: str, datasets: list, metrics: dict, prefix: str
) -> None:
    doc.heading(f"Per-class accuracy (`{main}`)", 3)
    doc.para(
        f"Top-1 accuracy of each class under `{BASELINE}` and under the variant with the best top-1 on that "
        f"dataset; the confusion matrices count top-1 predictions (rows: labels)."
    )
    for d in datasets:
        k = (*d, *group, main)
        candidates = [
            (metrics[(*k, v)]["top1"], v)
            for v in VARIANTS
            if (*k, v) in metrics and metrics[(*k, v)]["top1"] is not None
        ]
        if (*k, BASELINE) not in metrics or not candidates:
            continue
        best = max(candidates)[1]
        rows = [r for r in data.per_class if tuple(r[x] for x in RUN_KEYS) == k]
        by = {(r["components"], r["label"]): r for r in rows}
        labels = sorted({r["label"] for r in rows})
        names = [by.get((BASELINE, c), {}).get("class_name") or str(c) for c in labels]
        base = [by.get((BASELINE, c), {}).get("top1") or 0.0 for c in labels]
        top = [by.get((best, c), {}).get("top1") or 0.0 for c in labels]
        slug = partition_value(f"{d[0]}-{d[1]}")
        title = f"{d[0]} ({d[1]}), class weights {main}"
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
        if conf and len(labels) <= MAX_CONFUSION_CLASSES:
            index = {c: i for i, c in enumerate(labels)}
            matrices = {}
            for variant in (BASELINE, best):
                counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
                for r in conf:
                    if r["components"] == variant and r["predicted"] in index and r["label"] in index:
                        counts[index[r["label"]], index[r["predicted"]]] += r["images"]
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
    doc.table(
        [
            "dataset",
            "split",
            "describer",
            "kind",
            "images",
            "errors",
            "mean latency (s)",
            "total latency (s)",
            "mean prompt tokens",
            "mean completion tokens",
            "total prompt tokens",
            "total completion tokens",
        ],
        [
            [
                c["dataset"],
                c["split"],
                c["describer"],
                c["kind"],
                str(c["images"]),
                str(c["errors"]),
                num(c["mean_latency_s"], 4),
                num(c["total_latency_s"], 1),
                num(c["mean_prompt_tokens"], 1),
                num(c["mean_completion_tokens"], 1),
                "n/a" if c["prompt_tokens"] is None else str(c["prompt_tokens"]),
                "n/a" if c["completion_tokens"] is None else str(c["completion_tokens"]),
            ]
            for c in data.cost
        ],
        right=4,
    )


def default_name() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        from prefect.runtime import flow_run

        name = flow_run.name
    except Exception:  # outside Prefect there is no run name
        name = None
    return f"{stamp}-{partition_value(name)}" if name else stamp


def write_report(
    root: str,
    runs: list[dict[str, str]],
    out: str | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[str, Doc, ReportData]:
    """Write report.md, report.html and the figures to `out` (default `<root>/reports/<name>`)."""
    data = collect(root, runs, resamples, seed)
    doc = build(data)
    out = (out or f"{root}/reports/{default_name()}").rstrip("/")
    fs, path = filesystem(out)
    fs.makedirs(path, exist_ok=True)
    files = {
        "report.md": doc.markdown().encode(),
        "report.html": doc.html("wdys report").encode(),
        **doc.figures,
    }
    for name, content in files.items():
        fs.pipe_file(f"{path}/{name}", content)
    return out, doc, data


@task(cache_policy=NO_CACHE, name="report")
def report(root: str, runs: list[dict[str, str]], resamples: int = RESAMPLES, seed: int = 0) -> str:
    """Write the run's report under `<root>/reports/` and publish it as Prefect artifacts."""
    out, doc, data = write_report(root, runs, resamples=resamples, seed=seed)
    create_markdown_artifact(
        key="wdys-report",
        markdown=f"Report folder: `{out}`\n\n" + doc.markdown(figure_prefix=None),
        description="Paper-style table, gains with intervals and McNemar p-values, per-class accuracy.",
    )
    create_table_artifact(
        key="wdys-gains",
        table=[{k: g[k] for k in GAINS_SHOWN} for g in data.gains],
        description="Gain in top-1 over image-only, paired: 95% bootstrap interval, McNemar exact p.",
    )
    return out


def catalog_runs(root: str, filters: dict[str, list[str] | None]) -> list[dict[str, str]]:
    """The runs in the catalog (distinct RUN_KEYS of `metrics`) that match every given filter."""
    database = refresh_catalog(root)
    with connect(root, database, read_only=True) as con:
        runs = con.sql(f"select distinct {', '.join(RUN_KEYS)} from metrics").to_arrow_table().to_pylist()
    for key, values in filters.items():
        if values:
            wanted = {partition_value(v) for v in values}
            runs = [r for r in runs if r[key] in wanted]
    return sorted(runs, key=lambda r: tuple(r.values()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.report",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", default=None, help="storage root (default: $WDYS_ROOT or ./data)")
    parser.add_argument("--dataset", "--datasets", nargs="+", dest="dataset", help="datasets (default: all)")
    parser.add_argument("--split", "--splits", nargs="+", dest="split", help="splits (default: all)")
    parser.add_argument("--subset", nargs="+", help="row selections, e.g. all-shard256 (default: all)")
    parser.add_argument("--encoder", nargs="+", help="encoder model ids (default: all)")
    parser.add_argument("--describer", nargs="+", help="describer model ids (default: all)")
    parser.add_argument("--class-weights", nargs="+", help="class weightings (default: all)")
    parser.add_argument("--out", default=None, help="output folder (default: <root>/reports/<UTC time>)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    filters = {
        k: getattr(args, k) for k in ("dataset", "split", "subset", "encoder", "describer", "class_weights")
    }
    runs = catalog_runs(root, filters)
    if not runs:
        raise SystemExit(f"no runs in {root} match {filters}")
    out, _, _ = write_report(root, runs, args.out, args.resamples, args.seed)
    print(f"{out}/report.md")


if __name__ == "__main__":
    main()
