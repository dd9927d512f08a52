"""A transformers image-text-to-text VLM (Gemma-3, SmolVLM/Idefics3, LLaVA, Qwen2-VL, ...) as a `Describer`.

Inputs are rendered with the model's own chat template and generated in left-padded batches of
WDYS_HF_BATCH_SIZE (a number, or `auto`: the largest batch that fits, found once per model and device
by halving on out-of-memory; default `auto` on CUDA, 8 elsewhere), each image as its own one-image
list (`images=[[im], [im], ...]`, what every processor reads as one image per sample), so a batch
answers exactly as the same images would one by one. Image answers are greedy; class descriptions
are sampled with one seeded generator per (prompt, sample) (`backends.hf_sampling`), so they do
not depend on the batch.
On CUDA, images are preprocessed on the GPU where the processor can (transformers' torchvision-based
image processors take `device`). At most WDYS_HF_RESIDENT VLMs (default 1) stay loaded per device
(`backends.hf_resident`): loading another releases the least recently loaded, which loads again if
asked again.

A model that does not load, or a CUDA or driver error that is not out-of-memory, raises
`DescriberUnavailable`, now and for every later call; a batch that fails is retried item by item,
and an item that still fails alone is that item's error (retryable when it ran out of memory).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from backends import base, hf_resident
from backends.base import Answer, AnswerSink, DescriberUnavailable, RunFailure, handed, same_settings
from backends.device import pick_device, pick_dtype
from backends.hf_sampling import SeededGumbel, completion_length, eos_ids
from backends.hf_spec import (
    AUTO_BATCH_START,
    CLASS_TEMPERATURE,
    UNRESOLVED,
    hub_cache,
    is_local,
    parse_spec,
    settings_for,
    trust_remote_code,
)
from backends.hf_spec import batch_size as batch_size_setting
from core import heap
from method.prompts import MAX_NEW_TOKENS

__all__ = ["HFDescriber", "settings_for"]

_MAX_ERROR_CHARS = 300
# A model that did not load is not tried again in the same run (keyed by spec and flow run id).
_load_failures: dict[tuple[str, str | None], DescriberUnavailable] = {}
_auto_batches: dict[tuple[str, str], int] = {}  # the automatic batch size found per (model, device)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:_MAX_ERROR_CHARS]


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# Words of a CUDA (or ROCm) runtime or driver error: after one (a device-side assert, a lost
# device, a launch failure) the device's context is broken for every later item too.
DEVICE_FAULTS = ("CUDA error", "CUDA driver", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "HIP error")


def _device_fault(exc: BaseException) -> bool:
    """A device or driver failure that is not out-of-memory: the describer's, never an item's."""
    if _out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return any(words in str(exc) for words in DEVICE_FAULTS)


def _load_error(spec: str, exc: BaseException) -> DescriberUnavailable:
    if "trust_remote_code" in str(exc) and not trust_remote_code():
        return DescriberUnavailable(
            f"hf describer: {spec!r} needs code from its own repo to load; "
            "set WDYS_TRUST_REMOTE_CODE=1 if you trust that code"
        )
    if _out_of_memory(exc):
        hint = "out of memory: use a smaller model or free the GPU"
    else:
        hint = "check the model id or dir (a hub id must be downloadable, or cached when HF_HUB_OFFLINE=1)"
    return DescriberUnavailable(f"hf describer: cannot load {spec!r}: {_one_line(exc)}; {hint}")


class HFDescriber:
    """Wraps one loaded model and processor; `forward_passes` counts `generate()` calls."""

    def __init__(
        self,
        spec: str,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        max_new_tokens: int,
        batch_size: int | None,
        settings: dict[str, object],
    ) -> None:
        """`batch_size` None: the automatic batch size."""
        self.model_id = "hf:" + spec
        self.forward_passes = 0
        self._spec = spec
        self._model: PreTrainedModel | None = model
        self.device = str(model.device)
        self._processor = processor
        self._tokenizer = _left_padding(processor)
        self._max_new_tokens = max_new_tokens
        self._auto = batch_size is None
        found = _auto_batches.get((spec, self.device), AUTO_BATCH_START)
        self._batch_size = found if batch_size is None else max(1, batch_size)
        self._settings = settings
        self._eos_ids = eos_ids(model)
        self._unavailable = RunFailure()
        # generate() is not safe to share between threads.
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        spec: str,
        max_new_tokens: int = MAX_NEW_TOKENS,
        batch_size: int | None = None,
        keyed: dict[str, object] | None = None,
    ) -> HFDescriber:
        """Loads eagerly (the revision the key names) so that a wrong id fails the run up front.
        `keyed`: the settings a run's key holds (resolved on the flow's machine): the model loads at
        their revision, and a worker that would answer otherwise (another dtype on another device, a
        local dir edited since) refuses (`backends.base.same_settings`)."""
        if (failed := (spec, base.current_run())) in _load_failures:
            raise _load_failures[failed]
        settings = settings_for(spec, max_new_tokens, str(keyed["revision"]) if keyed else None)
        if keyed is not None:
            same_settings(f"hf:{spec}", keyed, settings)
        try:
            with hf_resident.loading(str(pick_device())):
                processor, model = _from_pretrained(spec, settings)
                size = batch_size if batch_size is not None else batch_size_setting()
                describer = cls(spec, model, processor, max_new_tokens, size, settings)
                hf_resident.loaded(describer)
        except DescriberUnavailable as exc:
            _load_failures[failed] = exc
            raise
        except Exception as exc:
            _load_failures[failed] = _load_error(spec, exc)
            raise _load_failures[failed] from exc
        return describer

    @property
    def resident(self) -> bool:
        return self._model is not None

    def release(self) -> None:
        """Frees the model's memory once a running batch ends; the next call loads it again."""
        with self._lock:
            self._model = None
        heap.collect()  # its reference cycles too, although the run's heap was settled after the load
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _ensure_loaded(self) -> None:
        """Load a released model again (making room on its device), outside this describer's lock."""
        if self._model is not None:
            return
        with hf_resident.loading(self.device, self):
            if self._model is None:
                try:
                    self._processor, model = _from_pretrained(self._spec, self._settings)
                except Exception as exc:
                    raise _load_error(self._spec, exc) from exc
                self._tokenizer = _left_padding(self._processor)
                self._model = model
                heap.settle()
            hf_resident.loaded(self)

    def settings(self) -> dict[str, object]:
        return dict(self._settings)

    def describe(
        self, images: Sequence[Image.Image], prompt: str, on_answer: AnswerSink | None = None
    ) -> list[Answer]:
        return self._answer_images(images, [prompt] * len(images), on_answer)

    def guess(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        class_names: Sequence[Sequence[str]],
        on_answer: AnswerSink | None = None,
    ) -> list[Answer]:
        return self._answer_images(images, prompts, on_answer)  # each prompt already lists its classes

    def describe_classes(
        self,
        prompts: Sequence[str],
        samples: Sequence[int],
        class_names: Sequence[str] = (),
        on_answer: AnswerSink | None = None,
    ) -> list[Answer]:
        """One sampled answer per (prompts[i], samples[i]), seeded by `sample_seed`: any subset,
        in any batch, gets the same answers."""
        if len(prompts) != len(samples):
            raise ValueError(f"{len(prompts)} prompts for {len(samples)} samples")
        texts = [self._render([{"type": "text", "text": p}]) for p in prompts]
        seeds = [base.sample_seed(p, s) for p, s in zip(prompts, samples, strict=True)]

        def inputs(rows: list[int]) -> BatchFeature:
            return self._tokenize([texts[i] for i in rows])

        def sampler(rows: list[int]) -> dict[str, object]:
            return {"logits_processor": [SeededGumbel([seeds[i] for i in rows], CLASS_TEMPERATURE)]}

        return self._run(len(prompts), inputs, sampler, on_answer)

    def _answer_images(
        self, images: Sequence[Image.Image], prompts: Sequence[str], on_answer: AnswerSink | None
    ) -> list[Answer]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        texts = [self._render([{"type": "image"}, {"type": "text", "text": p}]) for p in prompts]

        def inputs(rows: list[int]) -> BatchFeature:
            return self._tokenize([texts[i] for i in rows], [[images[i].convert("RGB")] for i in rows])

        return self._run(len(images), inputs, lambda rows: {}, on_answer)

    def _run(
        self,
        n: int,
        inputs: Callable[[list[int]], BatchFeature],
        extra: Callable[[list[int]], dict[str, object]],
        on_answer: AnswerSink | None = None,
    ) -> list[Answer]:
        """Batches of rows through `generate()`, each batch's answers handed to `on_answer` as it
        ends; a failed batch is retried row by row. Whether rows
        that all failed say the model cannot answer at all is the shard's judgement
        (`tasks.answers.require_an_answer`): a retry of a few pending rows must not end the run."""
        self._raise_if_unavailable()
        answers: list[Answer] = []
        while not answers and n:
            self._ensure_loaded()
            with self._lock:
                if self._model is None:  # released meanwhile: load again
                    continue
                start = 0
                while start < n:
                    rows = list(range(start, min(n, start + self._batch_size)))
                    answers.extend(handed(self._run_rows(rows, inputs, extra), on_answer, start))
                    start += len(rows)
        return answers

    def _run_rows(
        self,
        rows: list[int],
        inputs: Callable[[list[int]], BatchFeature],
        extra: Callable[[list[int]], dict[str, object]],
    ) -> list[Answer]:
        try:
            return self._generate(inputs(rows), **extra(rows))
        except Exception as exc:
            if _device_fault(exc):
                raise self._unavailable.remember(
                    DescriberUnavailable(
                        f"hf describer {self._spec!r} on {self.device}: a device error that is not out of "
                        f"memory ({_one_line(exc)}); check the GPU and its driver (nvidia-smi), then rerun"
                    )
                ) from exc
            oom = _out_of_memory(exc)
            if oom and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if oom and self._auto and len(rows) > 1:
                self._halve_batch(len(rows))
                answers: list[Answer] = []
                while len(answers) < len(rows):  # at the current size: a part may halve it again
                    part = rows[len(answers) : len(answers) + self._batch_size]
                    answers += self._run_rows(part, inputs, extra)
                return answers
            if len(rows) > 1:
                return [a for row in rows for a in self._run_rows([row], inputs, extra)]
            return [Answer(None, error=_one_line(exc), retryable=_out_of_memory(exc))]

    def _halve_batch(self, failed: int) -> None:
        """The automatic batch size after `failed` rows ran out of memory: half, kept for this model
        and device (later calls and later loads start there)."""
        size = max(1, failed // 2)
        key = (self._spec, self.device)
        _auto_batches[key] = min(_auto_batches.get(key, size), size)
        self._batch_size = min(self._batch_size, size)

    def _raise_if_unavailable(self) -> None:
        self._unavailable.check()

    def _render(self, content: list[dict[str, str]]) -> str:
        """A model whose chat template fails (a base model has none) cannot be asked anything."""
        self._raise_if_unavailable()
        messages = [{"role": "user", "content": content}]
        try:
            return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:
            raise self._unavailable.remember(
                DescriberUnavailable(
                    f"hf describer {self._spec!r}: its chat template cannot render a prompt "
                    f"({_one_line(exc)}); use an instruction-tuned VLM whose processor has a chat template"
                )
            ) from exc

    def _tokenize(self, texts: list[str], images: list[list[Image.Image]] | None = None) -> BatchFeature:
        """The rendered template already holds the BOS where the model wants one (Gemma, SmolVLM):
        the tokenizer must not add a second."""
        bos = self._tokenizer.bos_token
        add_special = not (bos and texts and texts[0].startswith(bos))
        kwargs: dict[str, object] = {"padding": True, "return_tensors": "pt"}
        kwargs["add_special_tokens"] = add_special
        if images is not None:
            kwargs["images"] = images
            kwargs.update(_gpu_preprocessing(self._processor, self._model))
        return self._processor(text=texts, **kwargs)

    def _generate(self, inputs: BatchFeature, **gen_kwargs: object) -> list[Answer]:
        """One greedy `generate()` call (sampling, where asked, is the logits processor's)."""
        model = self._model
        assert model is not None, "_ensure_loaded() comes first"
        inputs = inputs.to(model.device, dtype=model.dtype)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        width = inputs["input_ids"].shape[1]
        self.forward_passes += 1
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=self._max_new_tokens, do_sample=False, num_beams=1, **gen_kwargs
            )
        new_tokens = output[:, width:].cpu()
        latency = (time.perf_counter() - started) / len(new_tokens)
        answers = []
        for i, row in enumerate(new_tokens):
            length, truncated = completion_length(row, self._eos_ids)
            text = self._tokenizer.decode(row[:length], skip_special_tokens=True).strip()
            answers.append(
                Answer(
                    text=text or None,
                    latency_s=latency,
                    prompt_tokens=int(prompt_tokens[i]),
                    completion_tokens=length,
                    error=None if text else "empty answer",
                    truncated=truncated,
                )
            )
        return answers


def _left_padding(processor: ProcessorMixin) -> PreTrainedTokenizerBase:
    """The processor's tokenizer, padding on the left: generation continues each row at its right end."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _gpu_preprocessing(processor: ProcessorMixin, model: PreTrainedModel | None) -> dict[str, object]:
    """`device=` for transformers' torchvision-based (fast) image processors when the model is on
    CUDA: resizing and normalising then run on the GPU instead of the CPU."""
    image_processor = getattr(processor, "image_processor", None)
    fast = any(
        c.__name__ in ("TorchvisionBackend", "BaseImageProcessorFast") for c in type(image_processor).__mro__
    )
    if model is None or model.device.type != "cuda" or not fast:
        return {}
    return {"device": str(model.device)}


def _from_pretrained(spec: str, settings: dict[str, object]) -> tuple[ProcessorMixin, PreTrainedModel]:
    """The processor and model at the revision the settings name (the commit `main` pointed to when
    the key was made, for an unpinned hub id), on the device and in the dtype they name."""
    name, pinned = parse_spec(spec)
    revision = None if is_local(name) or settings["revision"] == UNRESOLVED else str(settings["revision"])
    options: dict[str, object] = {"trust_remote_code": trust_remote_code()}
    if revision:
        options["revision"] = pinned or revision
    if not is_local(name):
        options["cache_dir"] = str(hub_cache())  # the cache the revision was read from
    device = pick_device()
    # The config first: cheap, and it names a model that needs its own code before anything runs.
    AutoConfig.from_pretrained(name, **options)
    processor = AutoProcessor.from_pretrained(name, **options)
    model = AutoModelForImageTextToText.from_pretrained(name, dtype=pick_dtype(device), **options)
    model.to(device).eval()
    return processor, model
