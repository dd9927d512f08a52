"""Start-up: `wdys query` imports nothing heavier than duckdb and fsspec, importing the flow loads no
model library, and no module reads a setting when it is imported. Each check runs in a fresh
interpreter: this one has imported everything already."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from storage import io as sio
from storage.catalog import refresh_catalog
from storage.paths import shard_path
from storage.schemas import MANIFEST

REPO = Path(__file__).resolve().parents[1]
MODELS = ("torch", "open_clip", "transformers")
# What `wdys query` must not wait for: the model libraries, Prefect, and the data libraries that
# only writing shards needs.
NOT_FOR_A_QUERY = (*MODELS, "prefect", "pyarrow", "numpy", "pandas", "PIL")

PROBE = """
import sys
{code}
print("LOADED", *sorted({{m.split(".")[0] for m in sys.modules}} & set({watched!r})))
"""


def loaded(code: str, watched: tuple[str, ...]) -> tuple[set[str], str]:
    """The watched top-level modules a fresh interpreter has loaded after running `code`, and what
    it printed before."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, watched=watched)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    before, _, names = done.stdout.rpartition("LOADED")
    return set(names.split()), before


def test_a_query_loads_nothing_heavier_than_duckdb_and_fsspec(tmp_path):
    root = str(tmp_path)
    table = pa.table(
        {"image_id": ["a", "b"], "row": [0, 1], "label": [3, 4], "image": [None, None], "uri": ["x", "y"]}
    )
    keys = {"dataset": "d", "split": "s", "subset": "all-shard2"}
    sio.write_table(shard_path(root, MANIFEST, keys, 0), table.cast(MANIFEST.schema()))
    refresh_catalog(root)
    code = (
        "from wdys.cli import main\n"
        f"assert main(['query', '--root', {root!r}, 'select sum(label) as total from manifest']) == 0\n"
        f"assert main(['query', '--root', {root!r}, 'select count(*) as waiting from pending']) == 0"
    )
    heavy, printed = loaded(code, NOT_FOR_A_QUERY)
    assert heavy == set()
    assert "total" in printed and "7" in printed and "waiting" in printed


def test_importing_the_flow_loads_no_model_library():
    heavy, _ = loaded("import flows.benchmark", (*MODELS, "prefect"))
    assert heavy == {"prefect"}  # the flow is Prefect's; the models load when a shard needs them


READS_AT_IMPORT = """
import importlib, pkgutil
from core import settings

read = []
settings.Setting.get = lambda self: read.append(self.name)
for package in ("core", "method", "storage", "sources", "backends", "tasks", "flows", "deployments", "wdys"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
print("READ", *read)
"""


def test_no_module_reads_a_setting_when_imported():
    """Settings are read when used (core/settings.py): a bad value is then the one-line error of
    the command that uses it, and a long-lived worker sees a changed one."""
    _, printed = loaded(READS_AT_IMPORT, ())
    assert printed.rpartition("READ")[2].split() == []
