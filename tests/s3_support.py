"""moto's S3 server on 127.0.0.1 with an environment that points every AWS client at it, shared by
the S3 test modules."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import s3fs

# Variables that could point a client elsewhere or change its behaviour, cleared for the tests.
_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_MAX_ATTEMPTS", "OPENAI_LOG")


@contextmanager
def moto_s3(
    tmp_path_factory, key_id: str, secret: str, bucket: str
) -> Iterator[tuple[int, pytest.MonkeyPatch]]:
    """Yields moto's port and the monkeypatch holding the environment (callers may set more)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_address[1]
    home = tmp_path_factory.mktemp("aws")
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # one log line per request otherwise
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in _UNSET:
                mp.delenv(name, raising=False)
            mp.setenv("AWS_CONFIG_FILE", str(home / "config"))  # absent: nothing from ~/.aws
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            mp.setenv("AWS_ACCESS_KEY_ID", key_id)
            mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
            mp.setenv("WDYS_CATALOG_DIR", str(tmp_path_factory.mktemp("catalogs")))
            s3fs.S3FileSystem.clear_instance_cache()  # no client made for another endpoint
            s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{port}", skip_instance_cache=True).mkdir(bucket)
            try:
                yield port, mp
            finally:
                s3fs.S3FileSystem.clear_instance_cache()
    finally:
        server.stop()
        werkzeug.setLevel(level)
