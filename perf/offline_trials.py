"""Trials for faster CPU inference of the offline profile's EfficientNet-Lite classifiers, each
measured against the float32 channels_last baseline in the same run, interleaved batch by batch
(these machines are shared and noisy: only ratios from one section of one run are compared).

    python -m perf.offline_trials [--only lite0 lite2 batches threads process compile]
        [--images 256] [--first 0] [--extra-path DIR ...] [--compile-budget SECONDS] [--rounds 1]

Sections:
- lite0: Lite0 (the encoder's image side) at batch 16 over CIFAR-10 dev images: float32 eager,
  bf16 autocast, bf16 weights, BatchNorm folded into the convs, ONNX Runtime; images/s and
  exactness against float32: top-1 agreement, top-10 set overlap (the ConSE labels), the largest
  probability difference and the cosine of the ConSE embedding `encode_images` would return;
- lite2: the same for Lite2 at 260 px (the describer), plus agreement of its ordered top-3 labels
  (the describer's sentence);
- batches: torch float32, folded and ONNX Runtime at batch 1, 4, 8, 16 and 64, interleaved;
- threads: torch intra-op threads default / 1 / 2 (eager and BN folded), ONNX Runtime intra-op
  1 / 2, and two Python threads calling Lite0 at once (as the flow's shard tasks can) at 2 or 1;
- process: settings fixed per process, each in a child: inter-op threads 1, intra-op threads 1,
  OMP_WAIT_POLICY PASSIVE (2 or 1 threads) and ACTIVE, against the defaults (OpenMP reads its
  environment once, when torch loads it: to see the other sections under a policy, set it for
  the whole run, e.g. `OMP_WAIT_POLICY=PASSIVE python -m perf.offline_trials`);
- compile: torch.compile (inductor, freezing) in a child process under a time budget, cold cache.
ONNX Runtime and `onnx` (for the exporter) are optional: without them their rows are skipped. They
need not be in the project's environment: `pip install --target /tmp/ort onnxruntime onnx`, then
`--extra-path /tmp/ort` (appended after site-packages, so the pinned packages still win).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

Runner = Callable[[torch.Tensor], np.ndarray]
CL = torch.channels_last


@dataclass
class Variant:
    """One way of running a classifier: a function from a batch to float32 logits."""

    name: str
    run: Runner
    layout: torch.memory_format = CL
    threads: int | None = None  # torch intra-op threads while it runs; None: the default
    times: list[float] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)


def pictures(n: int, first: int = 0) -> list:
    """n CIFAR-10 dev images from index `first`, decoded as perf.bench `offline` does."""
    from sources.images import decode_manifest
    from sources.registry import open_dataset

    images, _ = decode_manifest(open_dataset("cifar10", "dev").manifest(list(range(first, first + n))))
    return [im.convert("RGB") for im in images if im is not None]


def classifier(variant: str):
    """The offline profile's classifier before its BatchNorm folding (channels_last, eval): the
    reference every variant is compared with."""
    from backends.offline import ImageNetClassifier

    return ImageNetClassifier(variant, fold=False)


def folded(model: nn.Module) -> nn.Module:
    """A folded copy, as backends.offline runs it (folding works in place)."""
    from backends.offline import fold_batchnorm

    return fold_batchnorm(copy.deepcopy(model))


def batches(preprocess: Callable, images: Sequence, size: int) -> list[torch.Tensor]:
    """Preprocessed NCHW float32 batches (contiguous), made before any timing."""
    return [
        torch.stack([preprocess(im) for im in images[start : start + size]])
        for start in range(0, len(images), size)
    ]


def eager(model: nn.Module, dtype: torch.dtype | None = None, autocast: bool = False) -> Runner:
    """Eager torch forward in inference mode, optionally under bf16 autocast or with a cast input."""

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            if dtype is not None:
                x = x.to(dtype)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with ctx:
                return model(x).float().numpy()

    return run


def onnxruntime() -> ModuleType | None:
    """onnxruntime and onnx if both import, else None with a message saying what is missing."""
    try:
        import onnx  # noqa: F401 - the TorchScript exporter needs it
        import onnxruntime as ort
    except ImportError as exc:
        print(
            f"  ONNX Runtime rows skipped: {exc.name} is not installed "
            "(pip install --target /tmp/ort onnxruntime onnx; then --extra-path /tmp/ort)",
            flush=True,
        )
        return None
    return ort


def onnx_runner(ort: ModuleType, model: nn.Module, size: int, folder: str, threads: int = 2) -> Runner:
    """Lite exported to ONNX (opset 17, dynamic batch), run by ONNX Runtime's CPU provider."""
    path = Path(folder) / f"lite_{size}.onnx"
    if not path.exists():
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                copy.deepcopy(model).to(memory_format=torch.contiguous_format),
                (torch.zeros(2, 3, size, size),),
                str(path),
                opset_version=17,
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's workers otherwise spin after each run, taking the cores from the torch variants that
    # run between its calls here (torch at batch 1 fell from ~55 to ~1 image/s next to it).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {"x": x.numpy()})[0]

    return run


def interleaved(variants: list[Variant], data: list[torch.Tensor], warmup: int = 1) -> None:
    """Run every variant on each batch in turn (rotating who goes first), timing each call."""
    layouts = {v.layout for v in variants}
    prepared = {lay: [b.contiguous(memory_format=lay) for b in data] for lay in layouts}
    default_threads = torch.get_num_threads()
    for i in range(-warmup, len(data)):
        turn = i % len(variants)
        for v in variants[turn:] + variants[:turn]:
            torch.set_num_threads(v.threads or default_threads)
            x = prepared[v.layout][max(i, 0)]
            started = time.perf_counter()
            out = v.run(x)
            spent = time.perf_counter() - started
            if i >= 0:
                v.times.append(spent)
                v.outputs.append(out)
    torch.set_num_threads(default_threads)


def rate(v: Variant, images_per_call: int) -> float:
    """Median images/s over the variant's timed calls."""
    return images_per_call / statistics.median(v.times)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def exactness(ref: np.ndarray, probs: np.ndarray, label_embeddings: np.ndarray | None) -> dict[str, float]:
    """How far a variant's probabilities are from float32's, in what the offline profile uses."""
    from backends.offline import TOP_K, conse

    ref_top = np.argsort(-ref, axis=1)
    top = np.argsort(-probs, axis=1)
    overlap = [len(set(a[:TOP_K]) & set(b[:TOP_K])) / TOP_K for a, b in zip(ref_top, top, strict=True)]
    out = {
        "top1": float(np.mean(ref_top[:, 0] == top[:, 0])),
        "top10": float(np.mean(overlap)),
        "top10_same": float(np.mean([o == 1.0 for o in overlap])),
        "top3_ordered": float(np.mean((ref_top[:, :3] == top[:, :3]).all(axis=1))),
        "max_dp": float(np.abs(ref - probs).max()),
    }
    if label_embeddings is not None:
        a, b = conse(ref, label_embeddings), conse(probs, label_embeddings)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out |= {"cos_min": float(cos.min()), "cos_mean": float(cos.mean())}
    return out


LEGEND = (
    "x fp32: images/s over float32 eager's in the same table; top-1: same top label; top-10: mean "
    "overlap of the top-10 sets (ConSE's labels); top-10=: share with the same top-10 set; top-3=: "
    "share with the same ordered top-3 (the describer's sentence); max|dp|: largest probability "
    "difference; cos: cosine of the ConSE embeddings (encode_images) to float32's"
)
HEADER = (
    f"{'variant':<48} {'batch':>5} {'img/s':>7} {'x fp32':>7} {'top-1':>7} {'top-10':>7} "
    f"{'top-10=':>7} {'top-3=':>7} {'max|dp|':>8} {'cos min':>8} {'cos mean':>9}"
)


def row(name: str, batch: int, speed: float, base: float, m: dict[str, float] | None = None) -> None:
    """One table line: speed, ratio to the float32 baseline, and exactness when measured."""
    line = f"{name:<48} {batch:>5} {speed:>7.1f} {speed / base:>7.2f}"
    if m:
        line += (
            f" {m['top1']:>7.1%} {m['top10']:>7.1%} {m['top10_same']:>7.1%} {m['top3_ordered']:>7.1%}"
            f" {m['max_dp']:>8.1e} {m.get('cos_min', float('nan')):>8.5f}"
            f" {m.get('cos_mean', float('nan')):>9.6f}"
        )
    print(line, flush=True)


def label_embeddings() -> np.ndarray:
    """MiniLM embeddings of the 1000 ImageNet labels, as the offline encoder builds them."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from backends.offline import MiniLM

    return MiniLM().encode(list(IMAGENET_CLASSNAMES)).vectors


def accuracy_table(variant: str, images: int, labels: np.ndarray, folder: str, first: int = 0) -> None:
    """Speed at batch 16 and exactness over `images` CIFAR-10 dev images, for one Lite variant."""
    from backends.offline import BATCH_SIZE

    c = classifier(variant)
    size = 224 if variant == "lite0" else 260
    data = batches(c.preprocess, pictures(images, first), BATCH_SIZE)
    variants = [
        Variant("float32 eager (baseline)", eager(c.model)),
        Variant("bf16 autocast", eager(c.model, autocast=True)),
        Variant("bf16 weights+input", eager(copy.deepcopy(c.model).to(torch.bfloat16), torch.bfloat16)),
        Variant("float32 BN folded", eager(folded(c.model))),
        Variant("bf16 autocast + BN folded", eager(folded(c.model), autocast=True)),
    ]
    ort = onnxruntime()
    if ort is not None:
        started = time.perf_counter()
        run = onnx_runner(ort, c.model, size, folder)
        print(f"  ONNX export + session: {time.perf_counter() - started:.1f} s", flush=True)
        variants.append(Variant("onnxruntime fp32 (2 threads)", run, torch.contiguous_format))
    interleaved(variants, data)
    ref = softmax(np.concatenate(variants[0].outputs))
    base = rate(variants[0], BATCH_SIZE)
    print(f"-- {variant} ({size} px), {len(ref)} images from {first}, threads {torch.get_num_threads()}")
    print(HEADER)
    for v in variants:
        m = exactness(ref, softmax(np.concatenate(v.outputs)), labels)
        row(v.name, BATCH_SIZE, rate(v, BATCH_SIZE), base, m)


def chunked(run: Runner, size: int) -> Runner:
    """`run` over a large batch in slices of `size` images (as `probabilities` does with 16)."""

    def run_all(x: torch.Tensor) -> np.ndarray:
        return np.concatenate([run(x[start : start + size]) for start in range(0, len(x), size)])

    return run_all


def batch_table(folder: str, sizes: Sequence[int] = (1, 4, 8, 16, 64), rounds: int = 2) -> None:
    """Lite0 images/s by batch size for torch float32, BN folded and ONNX Runtime: every (engine,
    size) pair works through the same 64 images once per round, all interleaved; ratios are to
    float32 eager at batch 16, the profile's current setting."""
    c = classifier("lite0")
    engines: list[tuple[str, Runner, torch.memory_format]] = [
        ("float32 eager", eager(c.model), CL),
        ("float32 BN folded", eager(folded(c.model)), CL),
    ]
    ort = onnxruntime()
    if ort is not None:
        run = onnx_runner(ort, c.model, 224, folder)
        engines.append(("onnxruntime fp32 (2 threads)", run, torch.contiguous_format))
    variants = [
        Variant(f"{name}, batch {size}", chunked(run, size), layout)
        for name, run, layout in engines
        for size in sizes
    ]
    data = batches(c.preprocess, pictures(64), 64)
    interleaved(variants, data * rounds)
    base = rate(variants[sizes.index(16)], 64) if 16 in sizes else rate(variants[0], 64)
    print(f"-- lite0 by batch size, threads {torch.get_num_threads()}, {rounds} rounds of 64 images")
    print(HEADER)
    for v, size in zip(variants, list(sizes) * len(engines), strict=True):
        row(v.name, size, rate(v, 64), base)


def process_child(interop: int | None, threads: int | None, calls: int) -> dict[str, float]:
    """In a fresh process: Lite0 float32 images/s at batch 16 with the given inter-op and intra-op
    threads (None: torch's default)."""
    if interop is not None:
        torch.set_num_interop_threads(interop)
    if threads is not None:
        torch.set_num_threads(threads)
    c = classifier("lite0")
    x = torch.randn(16, 3, 224, 224).contiguous(memory_format=CL)
    v = Variant("process", eager(c.model))
    interleaved([v], [x] * calls)
    return {"rate": rate(v, 16)}


def child(args: list[str], timeout: float, env: dict[str, str | None] | None = None) -> dict | None:
    """Run this module with --child ARGS; its last stdout line is a JSON result (None on timeout).
    `env` changes the child's environment (a None value unsets the variable)."""
    cmd = [sys.executable, "-m", "perf.offline_trials", "--child", *args]
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        print(done.stderr[-2000:], flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def thread_table(folder: str) -> None:
    """Torch intra-op threads default/1/2 (eager and BN folded), ONNX Runtime intra-op 1/2."""
    c = classifier("lite0")
    data = batches(c.preprocess, pictures(16 * 4), 16)
    default = torch.get_num_threads()
    fast = folded(c.model)
    variants = [
        Variant(f"torch threads default ({default})", eager(c.model)),
        Variant("torch threads 1", eager(c.model), threads=1),
        Variant("torch threads 2", eager(c.model), threads=2),
        Variant("BN folded, threads 1", eager(fast), threads=1),
        Variant("BN folded, threads 2", eager(fast), threads=2),
    ]
    ort = onnxruntime()
    if ort is not None:
        for n in (1, 2):
            run = onnx_runner(ort, c.model, 224, folder, threads=n)
            variants.append(Variant(f"onnxruntime intra-op {n}", run, torch.contiguous_format))
    interleaved(variants, data)
    print(f"-- lite0 intra-op threads (cpu_count {os.cpu_count()})")
    print(HEADER)
    base = rate(variants[0], 16)
    for v in variants:
        row(v.name, 16, rate(v, 16), base)
    rates: dict[int, list[float]] = {2: [], 1: []}
    for _ in range(2):
        for n, got in rates.items():
            got.append(concurrent(c.model, data[0], callers=2, threads=n, calls=2))
    for n, got in rates.items():
        row(f"2 callers at once, threads {n} each", 16, statistics.median(got), statistics.median(rates[2]))


def concurrent(model: nn.Module, x: torch.Tensor, callers: int, threads: int, calls: int) -> float:
    """Images/s of `callers` Python threads running forwards at once, as the flow's shard tasks
    (ThreadPoolTaskRunner) can: each caller's torch uses `threads` intra-op threads."""
    x = x.contiguous(memory_format=CL)

    def work() -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for _ in range(calls):
                model(x)

    default = torch.get_num_threads()
    pool = [threading.Thread(target=work) for _ in range(callers)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    spent = time.perf_counter() - started
    torch.set_num_threads(default)
    return callers * calls * len(x) / spent


PROCESS_SETTINGS: dict[str, tuple[str, str, dict[str, str | None]]] = {
    # label: (inter-op threads, intra-op threads, environment changes; None unsets) of one child
    "defaults": ("default", "default", {"OMP_WAIT_POLICY": None}),
    "interop 1": ("1", "default", {}),
    "threads 1": ("default", "1", {}),
    "threads 2, OMP_WAIT_POLICY=PASSIVE": ("default", "2", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "threads 1, OMP_WAIT_POLICY=PASSIVE": ("default", "1", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "threads 2, OMP_WAIT_POLICY=ACTIVE": ("default", "2", {"OMP_WAIT_POLICY": "ACTIVE"}),
}


def process_table(rounds: int = 1) -> None:
    """Settings fixed per process (inter-op threads once an op ran, OpenMP's wait policy at start),
    each in its own child process, children alternating."""
    results: dict[str, list[float]] = {key: [] for key in PROCESS_SETTINGS}
    for _ in range(rounds):
        for key, (interop, threads, env) in PROCESS_SETTINGS.items():
            got = child(["process", interop, threads], timeout=90, env=env)
            if got is not None:
                results[key].append(got["rate"])
    print(f"-- lite0 per-process settings (interop default {torch.get_num_interop_threads()})")
    print(HEADER)
    if results["defaults"]:
        ref = statistics.median(results["defaults"])
        for key, rates in results.items():
            if rates:
                row(f"own process: {key}", 16, statistics.median(rates), ref)


def compile_child(images: int, out: str) -> dict[str, float]:
    """In a fresh process: compile Lite0 with inductor (freezing), time it, then interleave it with
    eager over the images; the probabilities go to `out` (.npz)."""
    import torch._inductor.config as inductor

    from backends.offline import BATCH_SIZE

    inductor.freezing = True
    c = classifier("lite0")
    data = batches(c.preprocess, pictures(images), BATCH_SIZE)
    compiled = torch.compile(c.model)
    started = time.perf_counter()
    with torch.inference_mode():
        compiled(data[0].contiguous(memory_format=CL))
    compile_s = time.perf_counter() - started
    variants = [Variant("eager", eager(c.model)), Variant("compiled", eager(compiled))]
    interleaved(variants, data)
    np.savez(out, **{v.name: np.concatenate(v.outputs) for v in variants})
    return {"compile_s": compile_s, "eager": rate(variants[0], 16), "compiled": rate(variants[1], 16)}


def compile_table(images: int, labels: np.ndarray, budget: float) -> None:
    """torch.compile in a child with a cold inductor cache, stopped after `budget` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "probs.npz")
        started = time.perf_counter()
        got = child(
            ["compile", str(images), out],
            timeout=budget,
            env={"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "ind")},
        )
        print(f"-- lite0 torch.compile (child process, {time.perf_counter() - started:.0f} s in all)")
        if got is None:
            print(f"  torch.compile did not finish within {budget:.0f} s (or failed): no row", flush=True)
            return
        probs = np.load(out)
        print(f"  first call (cold compile, freezing on): {got['compile_s']:.1f} s")
        print(HEADER)
        m = exactness(softmax(probs["eager"]), softmax(probs["compiled"]), labels)
        row("float32 eager (baseline)", 16, got["eager"], got["eager"])
        row("torch.compile inductor, freezing", 16, got["compiled"], got["eager"], m)


SECTIONS = ("lite0", "lite2", "batches", "threads", "process", "compile")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m perf.offline_trials", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--images", type=int, default=256, help="CIFAR-10 dev images for exactness")
    parser.add_argument("--first", type=int, default=0, help="index of the first dev image (lite0, lite2)")
    parser.add_argument("--extra-path", nargs="*", default=[], help="folders appended to sys.path")
    parser.add_argument("--compile-budget", type=float, default=170.0, help="seconds for torch.compile")
    parser.add_argument("--rounds", type=int, default=1, help="child processes per setting (process)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path += [p for p in args.extra_path if p not in sys.path]
    if args.child:
        kind, *rest = args.child
        if kind == "process":
            interop, threads = (None if r == "default" else int(r) for r in rest)
            result = process_child(interop, threads, calls=5)
        else:
            result = compile_child(int(rest[0]), rest[1])
        print(json.dumps(result))
        return
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
        f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}, load {os.getloadavg()[0]:.1f}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    print(LEGEND, flush=True)
    labels = label_embeddings() if {"lite0", "lite2", "compile"} & set(args.only) else None
    with tempfile.TemporaryDirectory() as folder:
        for name in args.only:
            started = time.perf_counter()
            if name in ("lite0", "lite2"):
                accuracy_table(name, args.images, labels, folder, args.first)
            elif name == "batches":
                batch_table(folder)
            elif name == "threads":
                thread_table(folder)
            elif name == "process":
                process_table(args.rounds)
            else:
                compile_table(args.images, labels, args.compile_budget)
            took = time.perf_counter() - started
            print(f"   ({name}: {took:.0f} s, load {os.getloadavg()[0]:.1f})\n", flush=True)


if __name__ == "__main__":
    main()
