"""A transformers image-text-to-text VLM (SmolVLM, Qwen2-VL, ...) as a `Describer`.

Inputs are rendered with the model's own chat template and generated in left-padded batches, so a
batch answers exactly as the same images would one by one. Image answers are greedy (the cache key
then fully determines them); class descriptions are sampled, CuPL-style, from a fixed seed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    PreTrainedModel,
    ProcessorMixin,
)

from backends.base import Answer
from backends.device import pick_device, pick_dtype

CLASS_TEMPERATURE = 0.99
CLASS_SEED = 0


def _is_path_like(spec: str) -> bool:
    """Hub ids are `org/name`; anything that starts like a filesystem path is meant as a local dir."""
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()


def _model_name(spec: str) -> str:
    """The repo id, or the dir's own name: stable across machines, unlike an absolute path."""
    return Path(spec).expanduser().name if _is_path_like(spec) else spec


def _eos_ids(model: PreTrainedModel) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.get_text_config().eos_token_id
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def _completion_length(row: torch.Tensor, eos_ids: set[int]) -> int:
    """Generated tokens up to and including the first EOS; what follows it is padding."""
    for i, token in enumerate(row.tolist()):
        if token in eos_ids:
            return i + 1
    return len(row)


def _error(exc: Exception) -> Answer:
    return Answer(text=None, error=f"{type(exc).__name__}: {exc}")


class HFDescriber:
    """Wraps one loaded model and processor; `forward_passes` counts `generate()` calls."""

    def __init__(
        self,
        spec: str,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        max_new_tokens: int,
        batch_size: int,
    ) -> None:
        self.model_id = "hf:" + spec
        self.forward_passes = 0
        self._spec = spec
        self._model = model
        self._processor = processor
        self._tokenizer = processor.tokenizer
        self._max_new_tokens = max_new_tokens
        self._batch_size = max(1, batch_size)
        self._eos_ids = _eos_ids(model)
        # generate() and the global RNG seed are not safe to share between threads.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec: str, max_new_tokens: int = 77, batch_size: int = 8) -> HFDescriber:
        """Loads eagerly so that a wrong id fails the run up front, not as per-item errors."""
        if _is_path_like(spec) and not Path(spec).expanduser().is_dir():
            raise FileNotFoundError(f"hf describer: model dir {spec!r} does not exist")
        device = pick_device()
        try:
            processor = AutoProcessor.from_pretrained(spec)
            model = AutoModelForImageTextToText.from_pretrained(spec, dtype=pick_dtype(device))
        except Exception as exc:
            raise OSError(f"hf describer: cannot load {spec!r}: {type(exc).__name__}: {exc}") from exc
        model.to(device).eval()
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # generation continues every row from its right end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(spec, model, processor, max_new_tokens, batch_size)

    def settings(self) -> dict[str, object]:
        return {
            "model": _model_name(self._spec),
            "max_new_tokens": self._max_new_tokens,
            "do_sample": False,
            "class_temperature": CLASS_TEMPERATURE,
        }

    def describe(self, images: Sequence[Image.Image], prompt: str) -> list[Answer]:
        return self._answer_images(images, [prompt] * len(images))

    def predict(
        self, images: Sequence[Image.Image], prompts: Sequence[str], class_names: Sequence[Sequence[str]]
    ) -> list[Answer]:
        return self._answer_images(images, prompts)  # each prompt already lists its class names

    def describe_classes(
        self, prompts: Sequence[str], samples: int, class_names: Sequence[str] = ()
    ) -> list[list[Answer]]:
        """Seeded once per call, so the same prompts in the same order give the same samples."""
        per_batch = max(1, self._batch_size // max(1, samples))
        results: list[list[Answer]] = []
        with self._lock:
            torch.manual_seed(CLASS_SEED)
            for start in range(0, len(prompts), per_batch):
                chunk = list(prompts[start : start + per_batch])
                try:
                    flat = self._generate_text(chunk, samples)
                except Exception as exc:
                    flat = [_error(exc)] * (len(chunk) * samples)
                results.extend(flat[i : i + samples] for i in range(0, len(flat), samples))
        return results

    def _answer_images(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[Answer]:
        texts = [self._render([{"type": "image"}, {"type": "text", "text": p}]) for p in prompts]
        answers: list[Answer] = []
        with self._lock:
            for start in range(0, len(images), self._batch_size):
                chunk = [image.convert("RGB") for image in images[start : start + self._batch_size]]
                try:
                    inputs = self._processor(
                        text=texts[start : start + self._batch_size],
                        images=chunk,
                        padding=True,
                        return_tensors="pt",
                    )
                    answers.extend(self._generate(inputs, do_sample=False))
                except Exception as exc:
                    answers.extend([_error(exc)] * len(chunk))
        return answers

    def _generate_text(self, prompts: list[str], samples: int) -> list[Answer]:
        texts = [self._render([{"type": "text", "text": prompt}]) for prompt in prompts]
        inputs = self._processor(text=texts, padding=True, return_tensors="pt")
        # top_k/top_p neutral so that the temperature alone shapes the sampling, whatever the
        # model's generation_config ships (Qwen2-VL ships top_k=1, which would make it greedy).
        return self._generate(
            inputs,
            do_sample=True,
            temperature=CLASS_TEMPERATURE,
            top_k=0,
            top_p=1.0,
            num_return_sequences=samples,
        )

    def _render(self, content: list[dict[str, str]]) -> str:
        messages = [{"role": "user", "content": content}]
        return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _generate(self, inputs: BatchFeature, **gen_kwargs: object) -> list[Answer]:
        """One `generate()` call; rows of the output are repeated per returned sequence."""
        inputs = inputs.to(self._model.device, dtype=self._model.dtype)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        width = inputs["input_ids"].shape[1]
        self.forward_passes += 1
        started = time.perf_counter()
        with torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=self._max_new_tokens, **gen_kwargs)
        new_tokens = output[:, width:].cpu()
        latency = (time.perf_counter() - started) / len(new_tokens)
        per_row = len(new_tokens) // len(prompt_tokens)
        answers = []
        for i, row in enumerate(new_tokens):
            length = _completion_length(row, self._eos_ids)
            text = self._tokenizer.decode(row[:length], skip_special_tokens=True).strip()
            answers.append(
                Answer(
                    text=text,
                    latency_s=latency,
                    prompt_tokens=int(prompt_tokens[i // per_row]),
                    completion_tokens=length,
                )
            )
        return answers
