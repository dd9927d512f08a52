"""Every setting read from the environment, declared once (name, type, default, help), and the only
reader of the environment in the product code: docs/settings.md's table is made from these
declarations (`python -m core.settings --markdown`; tests/test_settings.py keeps them equal).

Also the offline-friendly Prefect defaults, in one place, for every way a run starts: the `wdys`
command, `python -m flows.benchmark`, the Makefile's targets (`python -m core.settings` prints them)
and the deployments' job environment. Without them a temporary Prefect server sends a telemetry
heartbeat ("Failed to send telemetry" on a machine without network; two runs at once on one machine
then race on its database and print a "database is locked" traceback), and the UI pulls assets from
the internet. They must be in the environment before Prefect is imported: Prefect reads its settings
once, at import.

Values are read when asked, never cached: a test or a long-lived worker may change them."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from core.errors import BadParameter

_TRUE = ("1", "true", "yes", "on")
T = TypeVar("T", int, float)


@dataclass(frozen=True)
class Setting:
    """One environment variable. `default` is the value used when it is unset or empty (None: the
    code decides, as `help` says); `kind` names what it holds, for the table and the error."""

    name: str
    kind: str
    default: str | None
    help: str

    def get(self) -> str | None:
        """The raw value, None when unset (an empty value is kept: for some settings it means off)."""
        return os.environ.get(self.name)

    def text(self) -> str:
        """The stripped value, else the default, else ''."""
        return (self.get() or "").strip() or (self.default or "")

    def integer(self) -> int:
        return self._parsed(int, "an integer")

    def number(self) -> float:
        return self._parsed(float, "a number")

    def flag(self) -> bool:
        return self.text().lower() in _TRUE

    def export(self, value: str) -> None:
        """Set it for this process and the processes it starts from now on."""
        os.environ[self.name] = value

    def named(self, prefix: str) -> Setting:
        """A member of a family (`WDYS_<NAME>_DIR`): the setting of one benchmark's prefix."""
        return replace(self, name=self.name.replace("WDYS_<NAME>", prefix))

    def _parsed(self, convert: Callable[[str], T], what: str) -> T:
        text = self.text()
        try:
            return convert(text)
        except ValueError:
            raise BadParameter(f"{self.name} must be {what}, not {text!r}") from None


def _declare(name: str, kind: str, default: str | None, help_text: str) -> Setting:
    setting = Setting(name, kind, default, help_text)
    SETTINGS.append(setting)
    return setting


SETTINGS: list[Setting] = []  # in the order of docs/settings.md's table

# Where results and data live.
ROOT = _declare(
    "WDYS_ROOT", "path or URL", "./data", "the storage root (any fsspec URL) when `--root` is not given"
)
CATALOG_DIR = _declare(
    "WDYS_CATALOG_DIR", "path", ".wdys", "where the DuckDB catalog of an object-store root is kept locally"
)
DATA_DIR = _declare("WDYS_DATA_DIR", "path", None, "a folder of benchmark copies, `<dir>/<name>/`")
DATASET_DIR = _declare(
    "WDYS_<NAME>_DIR", "path", None, "the local copy of one benchmark (`WDYS_CIFAR10_DIR`); first choice"
)
DATASET_HUB = _declare(
    "WDYS_<NAME>_HUB",
    "location",
    None,
    "one benchmark's source instead of its usual one (`hf://...`, any fsspec URL; `wds:` or `parquet:` "
    "first names the layout)",
)
SHARED_DATASETS = _declare(
    "WDYS_SHARED_DATASETS",
    "path",
    None,
    "the team's copies of the benchmarks; default `../shared/datasets` beside the checkout",
)

# How a run computes.
TASK_THREADS = _declare(
    "WDYS_TASK_THREADS",
    "integer >= 2",
    "4",
    "shard tasks in flight at once (one computes while the next is read)",
)
PROGRESS_INTERVAL_S = _declare(
    "WDYS_PROGRESS_INTERVAL_S", "seconds", "5", "the most often a stage's progress line is printed"
)
DEVICE = _declare(
    "WDYS_DEVICE", "torch device", None, "the device; default `cuda` when available, else the CPU"
)
CLIP_PRECISION = _declare(
    "WDYS_CLIP_PRECISION",
    "auto, fp32, amp-bf16, amp-fp16",
    "auto",
    "open_clip encoders: `auto` autocasts on CUDA (bf16 where supported, else fp16; float32 elsewhere);"
    " the precision joins the encoder id (`...+amp-bf16`) and so the cache key",
)
HF_BATCH_SIZE = _declare(
    "WDYS_HF_BATCH_SIZE",
    "integer or auto",
    None,
    "images (or class-description samples) per `generate()`, or `auto`: the largest batch that fits, found"
    " once per model and device by halving on out-of-memory; default `auto` on CUDA, 8 on the CPU",
)
HF_RESIDENT = _declare(
    "WDYS_HF_RESIDENT",
    "integer >= 0",
    "1",
    "`hf:` VLMs kept loaded per device; loading one more releases the least recently loaded (`0`: keep"
    " every one)",
)
TRUST_REMOTE_CODE = _declare(
    "WDYS_TRUST_REMOTE_CODE", "flag", None, "`1` lets `hf:` models that need their own code load"
)

# A served describer (`openai:`).
OPENAI_BASE_URL = _declare(
    "OPENAI_BASE_URL", "URL", None, "the OpenAI-compatible server; default OpenAI's (never a flow parameter)"
)
OPENAI_API_KEY = _declare(
    "OPENAI_API_KEY", "secret", "EMPTY", "its key (never a flow parameter, never stored)"
)
OPENAI_CONCURRENCY = _declare(
    "WDYS_OPENAI_CONCURRENCY",
    "integer",
    "128",
    "the most requests in flight to one endpoint and model, shared by every task of the run; lowered on"
    " 429/503 answers (honouring Retry-After), halved on timeouts, grown back on success; requests are"
    " admitted shard by shard, in order",
)
OPENAI_TIMEOUT_S = _declare("WDYS_OPENAI_TIMEOUT_S", "seconds", "60", "per request")
OPENAI_MAX_RETRIES = _declare(
    "WDYS_OPENAI_MAX_RETRIES",
    "integer",
    "4",
    "per request; the client retries 408/409/429/5xx, honouring Retry-After",
)
OPENAI_TOKEN_PARAM = _declare(
    "WDYS_OPENAI_TOKEN_PARAM",
    "max_tokens, max_completion_tokens",
    "max_tokens",
    "`max_completion_tokens` for OpenAI's reasoning models; switched automatically on the server's 400",
)
OPENAI_TEMPERATURE = _declare(
    "WDYS_OPENAI_TEMPERATURE",
    "omit",
    None,
    "`omit` sends no temperature (models that refuse one; also automatic on the server's 400); default 0"
    " for image answers, 0.99 for class descriptions",
)
OPENAI_EXTRA_BODY = _declare(
    "WDYS_OPENAI_EXTRA_BODY",
    "JSON object",
    "{}",
    'merged into every request, e.g. `{"reasoning_effort": "low"}` or a Gemini thinking budget; part of'
    " the cache key, so no secrets",
)

# A describer whose server the run starts (`vllm:`).
VLLM = _declare(
    "WDYS_VLLM",
    "path",
    None,
    "the `vllm` executable of `vllm:` describers (another venv, a container wrapper); default"
    " `.venv-vllm/bin/vllm` in the checkout (`make vllm`)",
)
VLLM_ARGS = _declare(
    "WDYS_VLLM_ARGS",
    "flags",
    None,
    "more `vllm serve` flags, e.g. `--dtype bfloat16 --max-model-len 8192 --seed 0`; those that change"
    " answers (dtype, quantization, context length, seed, images per prompt, ...) join the cache key",
)
VLLM_GPU_SHARE = _declare(
    "WDYS_VLLM_GPU_SHARE",
    "fraction",
    "0.75",
    "the GPU memory share of a `vllm:` server (`--gpu-memory-utilization`); the rest is left for the run's"
    " CLIP encoder",
)
VLLM_START_TIMEOUT_S = _declare(
    "WDYS_VLLM_START_TIMEOUT_S",
    "seconds",
    "1800",
    "how long a `vllm:` server may take to answer (weights download and load) before the run fails",
)
VLLM_BATCH_INVARIANT = _declare(
    "VLLM_BATCH_INVARIANT",
    "flag",
    None,
    "vLLM's own: `1` makes a `vllm:` server's answers independent of how requests are batched (slower;"
    " docs/protocol.md); part of the cache key",
)
VLLM_LOG_DIR = _declare(
    "WDYS_VLLM_LOG_DIR",
    "path",
    None,
    "where each `vllm:` server's log is written; default `wdys-vllm` in the temporary folder",
)

# Hugging Face's own, read where the code must know them before huggingface_hub does.
HF_HUB_OFFLINE = _declare("HF_HUB_OFFLINE", "flag", None, "`1`: models load from the Hugging Face cache only")
HF_HUB_CACHE = _declare(
    "HF_HUB_CACHE",
    "path",
    None,
    "the Hugging Face cache, also of the remote dataset bytes wdys reads (`sources.remote`); default "
    "`$HF_HOME/hub` (the bytes: `$WDYS_DATA_DIR/.cache/hub` when that is set)",
)
HF_HOME = _declare("HF_HOME", "path", None, "Hugging Face's home; default `~/.cache/huggingface`")

# Shared devices, Dask, deployments.
CUDA_VISIBLE_DEVICES = _declare(
    "CUDA_VISIBLE_DEVICES", "device list", None, "names the GPU limits by the physical GPU a worker sees"
)
GPU_LIMIT = _declare(
    "WDYS_GPU_LIMIT",
    "name",
    None,
    "model tasks hold a slot of the Prefect global concurrency limit `<this>-<host>-<device>`; deployed"
    " runs set `gpu`, local runs leave it unset and take no slot",
)
GPU_SLOTS = _declare("WDYS_GPU_SLOTS", "integer", "1", "slots of a GPU limit when a run creates it")
DASK_ADDRESS = _declare(
    "WDYS_DASK_ADDRESS", "address", None, "the Dask scheduler of `--dask`; default a local cluster"
)
DASK_WORKERS = _declare("WDYS_DASK_WORKERS", "integer", "2", "worker processes of the local Dask cluster")
DASK_GPU_RESOURCE = _declare(
    "WDYS_DASK_GPU_RESOURCE", "name", "GPU", "the Dask worker resource a model task asks for; set empty: none"
)
DASK_GPU_AMOUNT = _declare("WDYS_DASK_GPU_AMOUNT", "number > 0", "1", "how much of it a model task asks for")
WORK_POOL = _declare("WDYS_WORK_POOL", "name", "wdys-process", "`wdys deploy`: the work pool")
WORK_POOL_TYPE = _declare(
    "WDYS_WORK_POOL_TYPE", "type", "process", "`wdys deploy`: the pool's type when it is created"
)
IMAGE = _declare("WDYS_IMAGE", "image", None, "`wdys deploy`: the job image, for docker/kubernetes pools")
SOURCE = _declare(
    "WDYS_SOURCE",
    "path or git URL",
    None,
    "`wdys deploy`: where a flow run finds the code; default this checkout",
)
DEPLOYMENT_SUFFIX = _declare(
    "WDYS_DEPLOYMENT_SUFFIX", "text", None, "`wdys deploy`: appended to every deployment name (`-k8s`)"
)
RUN_TOKEN = _declare(
    "WDYS_RUN_TOKEN",
    "token",
    None,
    "set by a command-line run for what it starts (core/lifeline.py); not yours",
)

# No telemetry, no UI assets: for every Prefect process, servers and deployed flow runs included.
OFFLINE = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_UI_ENABLED": "false",
}

# Every local process (the Makefile exports these to all its targets): the offline settings; a
# patient temporary server on a loaded machine; Prefect's own INFO lines (one per task run) hidden,
# while the run's progress lines have a level of their own (tasks/progress.py); torch's OpenMP
# threads sleep instead of spinning while they wait (up to 3x faster on a shared machine,
# docs/BENCHMARKS.md).
LOCAL = OFFLINE | {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}

# A command-line run (`wdys`, `python -m flows.benchmark`): also hides the temporary server's
# spurious errors when it shuts down.
COMMAND_LINE = LOCAL | {"PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL"}


def child_environment(changes: dict[str, str]) -> dict[str, str]:
    """This process's environment with `changes`: for a child process (a `vllm serve`) that must
    inherit everything, the run's watchdog token included, and see a few values of its own."""
    return {**os.environ, **changes}


def apply_defaults(defaults: dict[str, str]) -> None:
    """Set each default the environment does not set already: the user's own value wins."""
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def shell_assignments(defaults: dict[str, str]) -> str:
    """`KEY=value ...` for a shell command line (the Makefile's targets)."""
    return " ".join(f"{key}={shlex.quote(value)}" for key, value in defaults.items())


def markdown_table() -> str:
    """docs/settings.md's table."""
    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default is not None else "unset"
        lines.append(f"| `{s.name}` | {s.kind} | {default} | {s.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table() if sys.argv[1:] == ["--markdown"] else shell_assignments(LOCAL))
