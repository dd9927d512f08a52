"""The leaderboard page: every encoder x describer of a storage root beside the others, one table per
class weighting, one column per dataset and the average; from the catalog's `leaderboard` view
(storage/leaderboard.py). A section of every report, its own page (`<root>/reports/leaderboard.md`
and `.html`, rewritten by each run and by `wdys report --leaderboard`) and a Prefect artifact."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb

from storage.leaderboard import MODEL_ROW
from tasks.report.data import weighting_note, weighting_order
from tasks.report.document import Doc, num

PAGE = "leaderboard"  # the page's file names: leaderboard.md, leaderboard.html
LEGEND = (
    "Top-1 accuracy in percent, one row per encoder and describer (`none`: no describer, image-only "
    "runs), one column per dataset (split). Each cell: the image-only top-1 → the best fused subset's "
    "top-1 (two or more components summed; its gain in points over image-only and the subset); "
    "whether it covers the full split or a sample, and its images; `published`: open_clip's "
    "published zero-shot top-1 of the same encoder weights on the dataset (80 templates, the full "
    "evaluation split), where one exists. `average`: the mean over the datasets the row covers, "
    "each with its own best subset. Rows are sorted by their average, best first. Every number is "
    "a row of the catalog's `metrics` view; the `leaderboard` view holds them all."
)


def leaderboard_rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every row of the catalog's `leaderboard` view (none before a run has classified)."""
    views = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
    if "leaderboard" not in views:
        return []
    return con.sql("select * from leaderboard").to_arrow_table().to_pylist()


def leaderboard_section(doc: Doc, rows: Sequence[dict], level: int = 2) -> None:
    doc.heading("Leaderboard", level)
    if not rows:
        doc.para("No run of this root has been classified yet.")
        return
    doc.para(LEGEND)
    for weighting in sorted({r["class_weights"] for r in rows}, key=weighting_order):
        doc.heading(f"Class weights `{weighting}`{weighting_note(weighting)}", level + 1)
        header, body = leaderboard_table([r for r in rows if r["class_weights"] == weighting])
        doc.table(header, body, right=2)


def leaderboard_table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """One weighting's table: header and rows (encoder, describer, a cell per dataset, average)."""
    datasets = sorted({(r["dataset"], r["split"]) for r in rows})
    models: dict[tuple, dict[tuple, dict]] = {}
    for r in rows:
        models.setdefault(tuple(r[k] for k in MODEL_ROW), {})[(r["dataset"], r["split"])] = r
    pairs = [m[:2] for m in models]
    body = []
    for model, cells in models.items():
        describer = model[1]
        if pairs.count(model[:2]) > 1:  # the same pair under other prompts or settings
            describer += f" (prompts {model[2]}, gen {model[3]}, shortlist {model[4]})"
        row = [model[0], describer, *(cell_text(cells[d]) if d in cells else "" for d in datasets)]
        score, text = average(list(cells.values()), len(datasets))
        body.append((score, [*row, text]))
    body.sort(key=lambda sr: -sr[0])
    return ["encoder", "describer", *(f"{d} ({s})" for d, s in datasets), "average"], [r for _, r in body]


def cell_text(r: dict) -> str:
    text = num(r["image_top1"])
    if r["best_top1"] is not None:
        text += f" → {num(r['best_top1'])} ({num(r['gain_top1'], sign=True)}, {r['best_components']})"
    text += f"; {'full split' if r['full_split'] else 'sample'}, {r['images']} images"
    if r["published_top1"] is not None:
        text += f"; published {num(r['published_top1'])}"
    return text


def average(cells: Sequence[dict], datasets: int) -> tuple[float, str]:
    """The row's sort score (its average fused top-1, else image-only) and its average cell: the
    means over the datasets it covers, the fused ones only where every dataset has a fused subset."""
    image = [c["image_top1"] for c in cells if c["image_top1"] is not None]
    if not image:
        return float("-inf"), "n/a"
    mean_image = sum(image) / len(image)
    text, score = num(mean_image), mean_image
    best = [c["best_top1"] for c in cells if c["best_top1"] is not None and c["image_top1"] is not None]
    if best and len(best) == len(cells) == len(image):
        score = sum(best) / len(best)
        text += f" → {num(score)} ({num(score - mean_image, sign=True)})"
    text += f"; {len(image)} of {datasets} datasets"
    if not all(c["full_split"] for c in cells):
        text += ", samples included"
    return score, text


def leaderboard_doc(root: str, rows: Sequence[dict]) -> Doc:
    """The page on its own: a title, where it comes from, the section."""
    doc = Doc()
    doc.heading("wdys leaderboard", 1)
    doc.para(f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the storage root `{root}`.")
    leaderboard_section(doc, rows)
    return doc
