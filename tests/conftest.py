"""Shared fixtures: offline settings, and one Prefect test server for the whole session (~10 s)."""

from __future__ import annotations

import os
import tempfile

# The suite needs no `../shared` beside the checkout: the shared-copy lookup sees an empty folder
# (the CIFAR-10 `dev` sample ships with the code) unless the caller points it somewhere.
os.environ.setdefault("WDYS_SHARED_DATASETS", tempfile.mkdtemp(prefix="wdys-no-shared-"))

from core.settings import OFFLINE, apply_defaults  # noqa: E402

apply_defaults(
    OFFLINE
    | {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that runs against a Prefect server (a flow run: models, a server) is `slow`, so
    `pytest -m "not slow"` is the quick loop; `make test` runs them all."""
    for item in items:
        if "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def fake_hub(monkeypatch):
    """The local stand-in of the Hugging Face hub (tests/fake_hub.py), `HF_ENDPOINT` pointed at it."""
    from wds_support import serve_hub

    yield from serve_hub(monkeypatch)
