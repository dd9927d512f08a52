"""LAION's CLIP_benchmark as the peer of our image-only baseline (`clip_benchmark eval`, 1.6.2).

Both sides get the same images (the Parquet bytes, not re-encoded), the same open_clip architecture
and checkpoint, the same batch size and the same class-weight work (our registry's class names and
the 80 OpenAI ImageNet templates our `templates` weighting uses), so wall times compare like for like.

CLIP_benchmark lives in a venv of its own (`ensure_env`): it needs NumPy < 2 while our project pins
NumPy 2, so this module never imports it and runs it as a subprocess only.

    python -c "from perf.clip_benchmark_peer import *; ..."
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import venv as venv_lib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

VENV = Path(".venv-clip-benchmark")
# clip-benchmark 1.6.2, its and open_clip's direct requirements (and what it imports undeclared), at
# the main project's versions except NumPy; pip resolves the rest (pydantic, cuda wheels, ...).
PINS: tuple[str, ...] = (
    "clip-benchmark==1.6.2",
    "numpy==1.26.4",  # clip_benchmark's accuracy() crashes under NumPy 2
    "torch==2.14.1",
    "torchvision==0.29.1",
    "open_clip_torch==3.3.0",
    "webdataset==1.0.2",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "pycocoevalcap==1.2",
    "pycocotools==2.0.11",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "huggingface_hub==2.4.0",
    "safetensors==0.8.0",
    "timm==1.0.31",
    "ftfy==6.3.1",
    "regex==2026.11.19",
    "tqdm==4.70.1",
    "pillow==13.0.0",
    "requests==2.34.2",  # imported by clip_benchmark's dataset builders, not declared by it
    "urllib3==2.8.0",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "idna==3.20",
    "braceexpand==0.1.7",
    "PyYAML==6.0.4",
)
MARKER = ".wdys-installed"
SPLIT = "test"
PNG, JPEG, WEBP = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF"
# Variables not handed to the subprocess: it needs no credentials.
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def ensure_env(venv: Path = VENV) -> Path:
    """The peer venv's python, created and pip-installed from `PINS` on first use.

    A marker file holding the pins makes it idempotent; changing `PINS` reinstalls into the same venv.
    pip's own configuration (local wheel indexes, the torch constraints file) applies as usual.
    """
    python = (venv / "bin" / "python").absolute()  # absolute, not resolved: the venv is in the path
    marker = venv / MARKER
    wanted = "\n".join(PINS) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        print(f"clip-benchmark venv {venv} is up to date", flush=True)
        return python
    if not python.exists():
        print(f"creating venv {venv}", flush=True)
        venv_lib.create(venv, with_pip=True, clear=venv.exists())
    print(f"installing into {venv} (several minutes the first time): {' '.join(PINS)}", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    subprocess.run([str(python), "-c", "import clip_benchmark.cli, numpy, open_clip, webdataset"], check=True)
    marker.write_text(wanted)
    print(f"clip-benchmark venv {venv} ready", flush=True)
    return python


def _suffix(data: bytes) -> str:
    """The member suffix clip_benchmark's wds loader decodes (webp, png, jpg): the bytes' own format."""
    if data.startswith(PNG):
        return "png"
    if data.startswith(JPEG):
        return "jpg"
    if data.startswith(WEBP) and data[8:12] == b"WEBP":
        return "webp"
    raise ValueError(f"image bytes are neither PNG, JPEG nor WebP (starts {data[:12]!r})")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _shard_bounds(rows: int, shards: int, align: int) -> list[int]:
    """Shard boundaries with every shard but the last a multiple of `align` (the batch size), so the
    per-worker batching of the wds loader makes the same number of batches as one loader would."""
    chunks = -(-rows // align)
    if shards < 1 or shards > chunks:
        raise ValueError(f"{shards} shards for {rows} rows in batches of {align}: need 1..{chunks}")
    return [min(rows, (chunks * s // shards) * align) for s in range(shards + 1)]


def _templates_file() -> list[str]:
    """Our `templates` weighting's templates as CLIP_benchmark's `{c}` lines.

    clip_benchmark strips each line and calls `line.format(c=name)`; ours call open_clip's lambdas.
    """
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]


def _check_prompts(class_names: Sequence[str], lines: Sequence[str]) -> None:
    """Fail unless clip_benchmark will build exactly the prompt strings of our `clip_templates`."""
    from method.prompts import clip_templates

    for name in class_names:
        if name != name.strip() or "\n" in name:
            raise ValueError(f"class name {name!r} would not survive classnames.txt")
        theirs = [line.strip().format(c=name) for line in lines]
        if theirs != clip_templates(name):
            raise ValueError(f"templates file does not reproduce our prompts for {name!r}")


def export_webdataset(
    parquet: Path,
    out: Path,
    shards: int,
    limit: int | None = None,
    sample_seed: int | None = None,
    dataset: str = "cifar10",
    align: int = 64,
) -> Path:
    """The Parquet split in CLIP_benchmark's local WebDataset layout under `out` (returned).

    Writes `test/{0..shards-1}.tar` (members `ROW.jpg`/`.png`/`.webp` after the bytes' own format,
    the original bytes, which the wds loader decodes as our flow does, and `ROW.cls`),
    `test/nshards.txt`, `classnames.txt` and `zeroshot_classification_templates.txt`. Rows are those
    our flow takes for `limit`/`sample_seed`; class names come from our registry (labels remapped by
    name where a `classes.json` beside the Parquet file orders them differently). Keep `shards` >=
    the loader workers: webdataset gives each worker whole shards, and an idle one fails.
    """
    from sources.registry import open_dataset

    class_names = list(open_dataset(dataset, SPLIT).class_names)
    lines = _templates_file()
    _check_prompts(class_names, lines)
    table = pq.read_table(parquet, columns=["img", "label"])
    total = table.num_rows
    if sample_seed is not None and limit is not None:
        from tasks.plan import select_rows

        rows = select_rows(total, limit, sample_seed)
    else:
        rows = list(range(total if limit is None else min(limit, total)))
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    own = parquet.parent / "classes.json"
    if own.exists():
        theirs = json.loads(own.read_text())
        if sorted(theirs) != sorted(class_names):
            raise ValueError(f"{own} names other classes than our registry: {theirs} vs {class_names}")
        labels = np.asarray([class_names.index(n) for n in theirs], dtype=np.int64)[labels]
    images = table.column("img").combine_chunks().field("bytes")

    split_dir = out / SPLIT
    split_dir.mkdir(parents=True, exist_ok=True)
    for old in split_dir.glob("*.tar"):
        old.unlink()
    bounds = _shard_bounds(len(rows), shards, align)
    for s in range(shards):
        with tarfile.open(split_dir / f"{s}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for row in rows[bounds[s] : bounds[s + 1]]:
                data = images[row].as_py()
                _add(tar, f"{row:06d}.{_suffix(data)}", data)
                _add(tar, f"{row:06d}.cls", str(int(labels[row])).encode())
    (split_dir / "nshards.txt").write_text(f"{shards}\n")
    (out / "classnames.txt").write_text("".join(f"{c}\n" for c in class_names))
    (out / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in lines))
    print(f"exported {len(rows)} images of {parquet} in {shards} shards to {out}", flush=True)
    return out


def random_checkpoint(arch: str, path: Path, seed: int = 0) -> Path:
    """A randomly initialised open_clip `arch` (torch seed `seed`) saved as a safetensors state dict.

    Both our flow (encoder `open_clip:<arch>/<path>`) and `clip_benchmark --pretrained <path>` load it
    through `open_clip.create_model_and_transforms(arch, pretrained=path)`; checked here by reloading.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    reloaded = open_clip.create_model(arch, pretrained=str(path)).state_dict()
    if reloaded.keys() != state.keys() or any(not torch.equal(reloaded[k], state[k]) for k in state):
        raise RuntimeError(f"{path} does not reload to the weights it was saved from")
    return path


_DIGEST = """
import hashlib, sys
def digest(model):
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode()); h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()
"""
_PEER_DIGEST = (
    _DIGEST
    + """
from clip_benchmark.models import load_clip
model, _, _ = load_clip(model_type="open_clip", model_name=sys.argv[1], pretrained=sys.argv[2],
                        cache_dir=None, device="cpu")
print(digest(model))
"""
)
_OUR_DIGEST = (
    _DIGEST
    + """
from backends.open_clip_encoder import OpenClipEncoder
print(digest(OpenClipEncoder.load(sys.argv[1] + "/" + sys.argv[2]).model))
"""
)


def weights_digests(python: Path, arch: str, checkpoint: Path) -> tuple[str, str]:
    """SHA-256 of the state dict as our encoder loads `checkpoint` and as clip_benchmark's `load_clip`
    loads it in the peer venv: equal digests mean both sides run the same weights."""
    env = {**_child_env(None), "WDYS_DEVICE": "cpu"}
    ours = subprocess.run(
        [sys.executable, "-c", _OUR_DIGEST, arch, str(checkpoint.resolve())],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()[-1]
    theirs = subprocess.run(
        [str(python.absolute()), "-c", _PEER_DIGEST, arch, str(checkpoint.resolve())],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=checkpoint.resolve().parent,
    ).stdout.split()[-1]
    return ours, theirs


def _child_env(python: Path | None, device: str = "cpu") -> dict[str, str]:
    """This environment without credentials, offline, with the peer venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not _SECRET.search(k)}
    env.update(OFFLINE_ENV)
    if python is not None:
        bin_dir = str(python.absolute().parent)
        env["VIRTUAL_ENV"] = str(python.absolute().parent.parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env.pop("PYTHONPATH", None)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # clip_benchmark has no device flag: it takes CUDA if it sees one
    return env


def _count_images(wds_root: Path) -> int:
    count = 0
    for shard in sorted((wds_root / SPLIT).glob("*.tar")):
        with tarfile.open(shard) as tar:
            count += sum(1 for m in tar.getmembers() if m.name.endswith(".cls"))
    return count


def run_clip_benchmark(
    python: Path,
    wds_root: Path,
    checkpoint: Path,
    arch: str = "ViT-B-32",
    batch_size: int = 64,
    num_workers: int = 2,
    out: Path | None = None,
    amp: bool = False,
    device: str = "cpu",
    save_clf: Path | None = None,
) -> dict:
    """`clip_benchmark eval` zero-shot classification of the exported `wds_root`, timed around the
    subprocess (start-up, model load, class weights and the image pass included).

    `amp=False` passes `--no_amp`: clip_benchmark autocasts by default (bfloat16 on the CPU), while our
    encoder runs float32. `save_clf` keeps its (dim, classes) classifier, to compare with our weights.
    Its output goes to `<out>.log`. Returns wall_s, acc1, acc5, mean_per_class_recall, images, metrics.
    """
    wds_root = wds_root.resolve()
    out = (out or wds_root / "clip_benchmark_result.json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    if any(c in str(p) for p in (wds_root, out) for c in "{}"):
        raise ValueError("clip_benchmark formats --dataset_root and --output: no braces in those paths")
    log = out.with_suffix(".log")
    cmd = [
        str(python.absolute().parent / "clip_benchmark"),
        "eval",
        "--dataset",
        f"wds/{wds_root.name}",
        "--dataset_root",
        str(wds_root),  # used as is: no {dataset} placeholder in it
        "--split",
        SPLIT,
        "--task",
        "zeroshot_classification",
        "--model",
        arch,
        "--pretrained",
        str(checkpoint.resolve()),
        "--batch_size",
        str(batch_size),
        "--num_workers",
        str(num_workers),
        "--output",
        str(out),
        "--seed",
        "0",
    ]
    if not amp:
        cmd.append("--no_amp")
    if save_clf is not None:
        cmd += ["--save_clf", str(save_clf.resolve())]
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(cmd, env=_child_env(python, device), cwd=out.parent, stdout=sink, stderr=sink)
    wall = time.perf_counter() - started
    if done.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"clip_benchmark eval failed ({done.returncode}): {' '.join(cmd)}\n{tail}")
    metrics = json.loads(out.read_text())["metrics"]
    return {
        "wall_s": wall,
        "acc1": metrics["acc1"],
        "acc5": metrics["acc5"],
        "mean_per_class_recall": metrics.get("mean_per_class_recall"),
        "images": _count_images(wds_root),
        "metrics": metrics,
    }
