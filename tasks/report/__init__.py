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
columns the images, the most excluded and the most partial (scored without one of their
components) by any variant, the image-only baseline's top-1 and each
variant's top-1 with its gain in points over the baseline on the same images.
"""

from tasks.report.cli import main
from tasks.report.data import ReportData, collect
from tasks.report.document import Doc, pvalue
from tasks.report.publish import report, write_report
from tasks.report.sections import build

__all__ = ["Doc", "ReportData", "build", "collect", "main", "pvalue", "report", "write_report"]
