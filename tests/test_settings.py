"""Settings: every environment variable the product reads is declared once in core/settings.py,
which is the only module that reads the environment; docs/settings.md's table is made from the declarations;
the Makefile exports the same offline defaults as the command line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from core import settings
from core.errors import BadParameter

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("core", "wdys", "flows", "tasks", "deployments", "storage", "backends", "method", "sources")


def product_files() -> list[Path]:
    return [p for package in PRODUCT for p in sorted((REPO / package).rglob("*.py"))]


def test_the_settings_page_is_the_declarations():
    page = (REPO / "docs" / "settings.md").read_text()
    table = re.search(r"<!-- settings: .*? -->\n(.*?)\n<!-- end of settings -->", page, re.S)
    assert table, "docs/settings.md has no generated settings table"
    assert table.group(1) == settings.markdown_table(), (
        "paste `python -m core.settings --markdown` into docs/settings.md"
    )


def test_only_the_settings_module_reads_the_environment():
    readers = {
        str(p.relative_to(REPO))
        for p in product_files()
        if re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())
    }
    assert readers == {"core/settings.py"}


def test_every_variable_the_code_names_is_declared():
    declared = {s.name for s in settings.SETTINGS}
    families = [re.compile(s.name.replace("<NAME>", "[A-Z0-9_]+") + "$") for s in settings.SETTINGS]
    named = {m for p in product_files() for m in re.findall(r"\bWDYS_[A-Z0-9_]*[A-Z0-9]\b", p.read_text())}
    undeclared = {n for n in named if n not in declared and not any(f.match(n) for f in families)}
    assert named and not undeclared
    assert len(declared) == len(settings.SETTINGS)  # each once


def test_values_are_read_when_asked_and_a_bad_one_is_one_line(monkeypatch):
    monkeypatch.delenv("WDYS_TASK_THREADS", raising=False)
    assert settings.TASK_THREADS.integer() == 4
    monkeypatch.setenv("WDYS_TASK_THREADS", " 6 ")
    assert settings.TASK_THREADS.integer() == 6
    monkeypatch.setenv("WDYS_TASK_THREADS", "six")
    with pytest.raises(BadParameter, match="^WDYS_TASK_THREADS must be an integer, not 'six'$"):
        settings.TASK_THREADS.integer()
    monkeypatch.setenv("WDYS_CIFAR10_DIR", "/data/c10")
    assert settings.DATASET_DIR.named("WDYS_CIFAR10").text() == "/data/c10"
    monkeypatch.setenv("WDYS_DASK_GPU_RESOURCE", "")
    assert settings.DASK_GPU_RESOURCE.get() == ""  # empty is kept: there it means "no resource"


def test_the_makefile_exports_the_offline_defaults(tmp_path):
    show = tmp_path / "show.mk"
    show.write_text("show:\n\t@env\n")
    env = {"PATH": "/usr/bin:/bin", "PREFECT_LOGGING_LEVEL": "DEBUG"}  # a value of the user's own wins
    done = subprocess.run(
        ["make", "-s", "-f", "Makefile", "-f", str(show), "show"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    exported = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert exported == exported | {**settings.LOCAL, "PREFECT_LOGGING_LEVEL": "DEBUG"}
