"""Settings: every environment variable the product reads is declared once in core/settings.py,
which is the only module that reads the environment; docs/settings.md's table is made from the declarations;
the Makefile exports the same offline defaults as the command line."""

from __future__ import annotations

import importlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core import guard, settings
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


def _openai() -> object:
    from backends.openai_describer import OpenAIDescriber

    return OpenAIDescriber.load("some-model")  # builds the client, sends nothing


def _cpu() -> object:
    import torch

    return torch.device("cpu")


def _reader(module: str, name: str, *args: object) -> Callable[[], object]:
    """A product function that reads a setting, imported when called (as the product imports it)."""
    return lambda: getattr(importlib.import_module(module), name)(*args)


# Each setting with a type that can be wrong: a wrong value, and a product function that reads it.
BAD_VALUES: dict[str, tuple[str, Callable[[], object]]] = {
    "WDYS_ROOT": ("nope://bucket/x", _reader("storage.paths", "resolve_root")),
    "WDYS_CIFAR10_DIR": (
        "/nonexistent/cifar10",
        _reader("sources.registry", "open_dataset", "cifar10", "dev"),
    ),
    "WDYS_TASK_THREADS": ("1", _reader("flows.benchmark", "task_threads")),
    "WDYS_PROGRESS_INTERVAL_S": ("soon", _reader("tasks.progress", "RunProgress", logging.getLogger("t"))),
    "WDYS_DEVICE": ("gpu0", _reader("backends.device", "pick_device")),
    "WDYS_CLIP_PRECISION": (
        "fp8",
        lambda: _reader("backends.open_clip_encoder", "default_precision", _cpu())(),
    ),
    "WDYS_HF_BATCH_SIZE": ("many", _reader("backends.hf_spec", "batch_size")),
    "WDYS_HF_RESIDENT": ("-1", _reader("backends.hf_spec", "resident_limit")),
    "WDYS_OPENAI_CONCURRENCY": ("lots", _openai),
    "WDYS_OPENAI_TIMEOUT_S": ("1m", _openai),
    "WDYS_OPENAI_MAX_RETRIES": ("few", _openai),
    "WDYS_OPENAI_TOKEN_PARAM": ("max_length", _openai),
    "WDYS_OPENAI_TEMPERATURE": ("0.5", _openai),
    "WDYS_OPENAI_EXTRA_BODY": ("[1]", _openai),
    "WDYS_GPU_SLOTS": ("two", _reader("tasks.slots", "ensure_limit", "wdys-test-limit")),
    "WDYS_DASK_WORKERS": ("many", _reader("flows.cluster", "dask_task_runner")),
    "WDYS_DASK_GPU_AMOUNT": ("0", _reader("flows.cluster", "gpu_resources")),
    "WDYS_VLLM": ("/nonexistent/vllm", _reader("backends.vllm_server", "executable")),
    "WDYS_VLLM_ARGS": ('--chat-template "unclosed', _reader("backends.vllm_server", "check_settings")),
    "WDYS_VLLM_GPU_SHARE": ("most", _reader("backends.vllm_server", "check_settings")),
    "WDYS_VLLM_START_TIMEOUT_S": ("soon", _reader("backends.vllm_server", "check_settings")),
}
# Settings any value of which is taken as it is (a path, a name, a flag, a secret), or that only an
# outside service can refuse (its own one-line error in core/guard.py).
ANY_VALUE = {
    "WDYS_CATALOG_DIR", "WDYS_DATA_DIR", "WDYS_<NAME>_HUB", "WDYS_SHARED_DATASETS",
    "WDYS_TRUST_REMOTE_CODE", "OPENAI_BASE_URL", "OPENAI_API_KEY", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
    "HF_HOME", "CUDA_VISIBLE_DEVICES", "WDYS_GPU_LIMIT", "WDYS_DASK_ADDRESS", "WDYS_DASK_GPU_RESOURCE",
    "WDYS_WORK_POOL", "WDYS_WORK_POOL_TYPE", "WDYS_IMAGE", "WDYS_SOURCE", "WDYS_DEPLOYMENT_SUFFIX",
    "WDYS_RUN_TOKEN", "WDYS_VLLM_LOG_DIR", "VLLM_BATCH_INVARIANT",
}  # fmt: skip


def test_every_setting_is_either_checked_with_a_bad_value_or_takes_any():
    checked = {n.replace("WDYS_CIFAR10_", "WDYS_<NAME>_") for n in BAD_VALUES}  # one of the family
    assert checked | ANY_VALUE == {s.name for s in settings.SETTINGS} and not checked & ANY_VALUE


@pytest.mark.parametrize("name", BAD_VALUES)
def test_a_bad_value_of_each_setting_is_one_line_with_status_2(name, monkeypatch, capsys):
    value, read = BAD_VALUES[name]
    monkeypatch.setenv(name, value)
    assert guard.guarded(lambda argv: read(), []) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and (name in lines[0] or value in lines[0])


def test_a_bad_setting_stops_wdys_run_before_prefect_starts(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "wdys", "run", "--root", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "WDYS_TASK_THREADS": "abc"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: WDYS_TASK_THREADS must be an integer, not 'abc'"]
