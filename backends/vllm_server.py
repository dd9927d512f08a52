"""The `vllm serve` processes of a run: one per model id per process, started when a shard first
asks the model something, shared by every shard task, stopped when the run ends.

A server is `vllm serve MODEL --host 127.0.0.1 --port P --gpu-memory-utilization SHARE [WDYS_VLLM_ARGS]`
on a free local port; it is ready once `/health` answers and `/v1/models` lists the model. Its own
log goes to a file (WDYS_VLLM_LOG_DIR, else `wdys-vllm` in the temporary folder) that a failure names,
with its last lines. It runs in a session of its own (a Ctrl-C at the terminal reaches the run, which
stops it) and inherits the run's environment, so the run's watchdog (`core.lifeline`, which ends every
process carrying the run's token) ends it and its engine processes when the run is SIGKILLed.
`stop_all` ends every server: the flow calls it when the run ends, and `atexit` at the latest.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from backends.base import DescriberUnavailable
from core import settings
from core.errors import BadParameter, UserError

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 8
PROGRESS_EVERY_S = 30.0
_STOP_GRACE_S = 15.0
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy


class VLLMMissing(UserError):
    """No vLLM where the run looks for it: the one line says how to get it."""


def executable() -> str:
    """$WDYS_VLLM, else the checkout's `.venv-vllm/bin/vllm` (`make vllm`)."""
    named = settings.VLLM.text()
    path = Path(named) if named else REPO / ".venv-vllm" / "bin" / "vllm"
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = f"WDYS_VLLM={named}" if named else f"{path}"
        raise VLLMMissing(
            f"no vLLM for `vllm:` describers at {where}: run `make vllm` (builds .venv-vllm) or set"
            " WDYS_VLLM to a vllm executable; or use `hf:` instead"
        )
    return str(path)


def available() -> bool:
    """Whether this machine has a vLLM for `vllm:` describers ($WDYS_VLLM or `.venv-vllm`)."""
    try:
        executable()
    except VLLMMissing:
        return False
    return True


def open_vlm(model_id: str) -> str:
    """`hf:X` as `vllm:X` where this machine has vLLM (the faster engine for a whole benchmark),
    unchanged elsewhere and for every other scheme: what the paper deployments and `watch-models`
    run an open VLM with."""
    scheme, _, spec = model_id.partition(":")
    return f"vllm:{spec}" if scheme == "hf" and available() else model_id


@cache
def _version_of(exe: str, mtime: float) -> str:
    try:
        done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VLLMMissing(f"`{exe} --version` failed: {exc}") from None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise VLLMMissing(
            f"`{exe} --version` failed (status {done.returncode}): {done.stderr.strip()[-300:]}"
        )
    return lines[-1]


def version() -> str:
    """`vllm --version` of the executable in use (asked once per executable and change)."""
    exe = executable()
    return _version_of(exe, os.stat(exe).st_mtime)


def extra_args() -> list[str]:
    import shlex

    try:
        return shlex.split(settings.VLLM_ARGS.text())
    except ValueError as exc:
        raise BadParameter(f"{settings.VLLM_ARGS.name} is not a shell-quoted list of flags: {exc}") from None


def check_settings() -> list[str]:
    """The server's settings, checked before any shard (a typo fails in one line, not after an hour):
    its flags, returned, and a memory share and start deadline that are numbers in range."""
    share = settings.VLLM_GPU_SHARE.number()
    if not 0 < share <= 1:
        raise BadParameter(f"{settings.VLLM_GPU_SHARE.name} must be a fraction in (0, 1], not {share:g}")
    if settings.VLLM_START_TIMEOUT_S.number() <= 0:
        raise BadParameter(f"{settings.VLLM_START_TIMEOUT_S.name} must be a positive number of seconds")
    return extra_args()


# `vllm serve` flags that change what the model answers: they join the cache key. Memory, parallelism
# and scheduling flags are left out: with VLLM_BATCH_INVARIANT=1 they change no answer (docs/protocol.md).
OUTPUT_FLAGS = (
    "dtype", "quantization", "max-model-len", "seed", "revision", "tokenizer", "tokenizer-revision",
    "tokenizer-mode", "kv-cache-dtype", "limit-mm-per-prompt", "mm-processor-kwargs", "generation-config",
    "override-generation-config", "chat-template", "trust-remote-code", "max-logprobs", "enforce-eager",
    "hf-overrides", "load-format",
)  # fmt: skip


def output_flags(args: list[str]) -> dict[str, str]:
    """The answer-changing flags among `args` (`--flag value`, `--flag=value` or a bare `--flag`)."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        name, eq, value = arg.removeprefix("--").partition("=")
        name = name.replace("_", "-")
        if not arg.startswith("--") or name not in OUTPUT_FLAGS:
            continue
        if not eq:
            following = args[i + 1] if i + 1 < len(args) else "--"
            value = "true" if following.startswith("--") else following
        found[name] = value
    return found


# While a server runs, it is a model computing on its device: it holds one slot of the device's
# concurrency limit when the run uses limits. `tasks.slots` sets this (limits are Prefect's, a layer up).
device_hold: Callable[[str], AbstractContextManager[None]] | None = None


@dataclass(eq=False)
class Server:
    model: str
    port: int
    log: Path
    process: subprocess.Popen = field(repr=False)
    device: str
    hold: ExitStack = field(default_factory=ExitStack, repr=False)  # its device slot, released at stop
    released: bool = False  # stopped to make room on its device: the next request starts another
    _busy: int = field(default=0, repr=False)
    _turns: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _gone: threading.Event = field(default_factory=threading.Event, repr=False)  # released and stopped

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def resident(self) -> bool:
        """Whether it holds its device (`backends.hf_resident`'s protocol, shared with `hf:` VLMs)."""
        return not self.released and self.alive()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[bool]:
        """A request's use of the server: False once it was released (ask the describer for the
        new one); a release waits for every use that began before it."""
        with self._turns:
            if self.released:
                yield False
                return
            self._busy += 1
        try:
            yield True
        finally:
            with self._turns:
                self._busy -= 1
                self._turns.notify_all()

    def release(self, wait: bool = True) -> None:
        """Stop it to make room on its device for another model (like an `hf:` VLM's release), once
        the requests sent to it have their answers (`wait`; else at once, and they fail); the
        describer starts it again when asked."""
        with self._turns:
            self.released = True
            if wait:
                self._turns.wait_for(lambda: self._busy == 0)
        self.stop()
        with _registry_lock:
            if _servers.get(self.model) is self:
                del _servers[self.model]
        self._gone.set()

    def alive(self) -> bool:
        return self.process.poll() is None

    def exited(self, wait_s: float = 0.0) -> int | None:
        """The exit status once it has ended (waiting up to `wait_s`), else None."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=wait_s) if wait_s else self.process.poll()
        return None

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of its log, joined on ' | ' (one line for an error message)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        kept = [" ".join(line.split()) for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(kept)

    def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        """SIGTERM its process group (the API server and its engine processes), SIGKILL after grace."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)
        with contextlib.suppress(ProcessLookupError):  # engine processes the API server left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        self.hold.close()


_servers: dict[str, Server] = {}
_locks: dict[str, threading.Lock] = {}
_registry_lock = threading.Lock()


def running() -> dict[str, Server]:
    with _registry_lock:
        return dict(_servers)


def serve(model: str, revision: str | None = None) -> Server:
    """The running server of `model`, started (and waited for) if this process has none."""
    with _registry_lock:
        lock = _locks.setdefault(model, threading.Lock())
    with lock:
        server = _servers.get(model)
        if server is not None and server.released:
            server._gone.wait()  # its memory is given back before another server of it starts
        elif server is not None and server.alive():
            return server
        server = _start(model, revision)
        with _registry_lock:
            _servers[model] = server
        return server


def stop_all() -> None:
    """Stop every server this process started (the end of a run; safe to call twice), at once:
    requests still in flight fail. A later run in this process starts its own again."""
    with _registry_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.release(wait=False)


atexit.register(stop_all)


def stop_servers(*_hook_args: object) -> None:
    """`stop_all` as a Prefect flow state hook (called with the flow, its run and its state)."""
    stop_all()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_path(model: str, port: int) -> Path:
    folder = Path(settings.VLLM_LOG_DIR.text() or Path(tempfile.gettempdir()) / "wdys-vllm")
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")[-80:]
    return folder / f"{name}-{os.getpid()}-{port}.log"


def _device_env(hold: ExitStack) -> tuple[str, dict[str, str]]:
    """The environment of a server on the device the run's model tasks use (`pick_device`), with
    the `hf:` VLMs resident there released first and a slot of its limit taken into `hold`: the GPU
    is shared on purpose, not overcommitted."""
    from backends import hf_resident
    from backends.device import pick_device

    device = pick_device()
    if device_hold is not None:
        try:
            hold.enter_context(device_hold(str(device)))
        except UserError as exc:
            raise DescriberUnavailable(f"no vLLM server started: {exc}") from None
    for resident in hf_resident.resident_on(str(device)):
        if not isinstance(resident, Server):  # each `vllm:` model has its own server (and share)
            resident.release()
    changes = {}
    if device.type == "cuda" and device.index is not None:
        visible = [v for v in settings.CUDA_VISIBLE_DEVICES.text().split(",") if v.strip()]
        index = device.index
        changes[settings.CUDA_VISIBLE_DEVICES.name] = visible[index] if index < len(visible) else str(index)
    return str(device), settings.child_environment(changes)  # the watchdog token too (core/lifeline.py)


def _start(model: str, revision: str | None) -> Server:
    exe, port = executable(), _free_port()
    share = settings.VLLM_GPU_SHARE.number()
    command = [exe, "serve", model, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--gpu-memory-utilization", str(share), *(["--revision", revision] if revision else [])]
    command += extra_args()
    log, hold = _log_path(model, port), ExitStack()
    try:
        device, env = _device_env(hold)
        with log.open("w") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
    except BaseException:
        hold.close()
        raise
    server = Server(model, port, log, process, device, hold)
    try:
        _wait_ready(server, settings.VLLM_START_TIMEOUT_S.number())
    except BaseException:
        server.stop(grace_s=5.0)
        raise
    from backends import hf_resident

    hf_resident.loaded(server)  # an `hf:` VLM loading on its device later releases it
    return server


def _wait_ready(server: Server, timeout_s: float) -> None:
    """Until `/health` answers and `/v1/models` lists the model; a progress line every 30 s."""
    started = time.monotonic()
    next_line = started + PROGRESS_EVERY_S
    while True:
        status = server.exited()
        if status is not None:
            raise _start_failed(server, f"exited with status {status} before it was ready")
        if _answers(server):
            return
        now = time.monotonic()
        if now - started > timeout_s:
            raise _start_failed(server, f"did not answer within {timeout_s:g} s (WDYS_VLLM_START_TIMEOUT_S)")
        if now >= next_line:
            print(
                f"vllm: starting {server.model} ({now - started:.0f} s so far)", file=sys.stderr, flush=True
            )
            next_line = now + PROGRESS_EVERY_S
        time.sleep(0.2)


def _answers(server: Server) -> bool:
    root = f"http://127.0.0.1:{server.port}"
    try:
        with _LOCAL.open(f"{root}/health", timeout=5) as response:
            if response.status != 200:
                return False
        with _LOCAL.open(f"{root}/v1/models", timeout=5) as response:
            listed = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return any(entry.get("id") == server.model for entry in listed.get("data", []))


def _start_failed(server: Server, cause: str) -> DescriberUnavailable:
    return DescriberUnavailable(
        f"the vLLM server of {server.model} {cause}; its log {server.log} ends: {server.tail() or '(empty)'}"
    )
