"""Tiny random VLMs of real architectures, built offline with their processors and saved to a dir.

Nothing is downloaded: each tokenizer is a byte-level BPE trained on a few sentences with the
architecture's special tokens, each processor is constructed by hand with its chat template, and
each model has a few thousand random weights. Images are 16-32 px, so a batch takes milliseconds.
`build(arch, path)` saves model + processor so that `HFDescriber.load(path)` loads them as a user's
download would be loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

CORPUS = ["a photo of a cat", "describe the image", "a short caption of a dog on the grass"]


def tokenizer(
    specials: list[str], eos: str, pad: str, template: str, **extra: str
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences: any text encodes; `extra` names special tokens
    the processor looks up as tokenizer attributes (boi_token, image_token, ...)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=pad,
        chat_template=template,
        extra_special_tokens=extra or None,
    )


def _generic_template(image: str, bos: str = "", turn: str = "<|im_start|>", end: str = "<|im_end|>") -> str:
    return (
        bos + "{% for m in messages %}" + turn + "{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}" + image + "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}" + end + "\n{% endfor %}"
        "{% if add_generation_prompt %}" + turn + "assistant\n{% endif %}"
    )


def _finish(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, projection_std: float = 0.0
) -> PreTrainedModel:
    """Image projections drawn larger where the default leaves the image no say in the answer
    (Gemma-3 starts its projection at zero); generation ids from the tokenizer."""
    for name, param in model.named_parameters():
        if (
            projection_std
            and param.dim() == 2
            and any(p in name for p in ("projector", "connector", "merger"))
        ):
            torch.nn.init.normal_(param, std=projection_std)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.pad_token_id
    return model.eval()


def _llama_text(tok: PreTrainedTokenizerFast) -> dict[str, object]:
    return {
        "model_type": "llama",
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.pad_token_id,
    }


def qwen2_vl_processor(patch_size: int, **pixel_bounds: int) -> ProcessorMixin:
    """Qwen2-VL's processor over a tiny tokenizer with its special tokens: `patch_size`-pixel
    patches merged 2x2 (the real model's are 14), within `pixel_bounds` (min_pixels, max_pixels)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    template = _generic_template("<|vision_start|><|image_pad|><|vision_end|>")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    tok = tokenizer(specials + ["<|image_pad|>", "<|video_pad|>"], "<|im_end|>", "<|endoftext|>", template)
    sizes = {"patch_size": patch_size, "merge_size": 2, "temporal_patch_size": 2}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixel_bounds, **sizes),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**sizes),
        chat_template=template,
    )


def qwen2_vl_token_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    """The config's ids of the image, video and vision-bracket tokens."""
    ids = tok.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def qwen2_vl() -> tuple[PreTrainedModel, ProcessorMixin]:
    """4-pixel patches merged 2x2: a 32x32 image is 4 placeholder tokens, 64x48 is 12."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    processor = qwen2_vl_processor(4, min_pixels=8 * 8, max_pixels=64 * 64)
    tok = processor.tokenizer
    text = _llama_text(tok) | {
        "model_type": "qwen2_vl_text",
        # head_dim 8: the (temporal, height, width) rotary sections cover its 4 frequencies
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
    }
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2} | {
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **qwen2_vl_token_ids(tok))
    torch.manual_seed(0)
    return _finish(Qwen2VLForConditionalGeneration(config), tok), processor


def gemma3() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Gemma-3: every image resized to 16x16, 4x4 patches pooled to 4 soft tokens; the processor
    wants one list of images per sample (a flat list of two images is one sample with two)."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    template = _generic_template("<start_of_image>", "<bos>", "<start_of_turn>", "<end_of_turn>")
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    images = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tok = tokenizer(specials + list(images.values()), "<end_of_turn>", "<pad>", template, **images)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 16, "width": 16}),
        tokenizer=tok,
        chat_template=template,
        image_seq_length=4,
    )
    text = _llama_text(tok) | {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}
    text |= {"query_pre_attn_scalar": 16, "model_type": "gemma3_text"}
    text |= {"sliding_window": 64, "layer_types": ["sliding_attention", "full_attention"]}
    ids = tok.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=text,
        vision_config=_vit(),
        mm_tokens_per_image=4,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    torch.manual_seed(0)
    return _finish(Gemma3ForConditionalGeneration(config), tok, projection_std=0.05), processor


def idefics3() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Idefics3 (SmolVLM-256M/500M's architecture) without image splitting: a 16 px image, 4x4
    patches, pixel-shuffled by 2 into 4 image tokens; SmolVLM's own chat template."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    template = (
        "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
        "{% if m['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
        "{% elif c['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>"]
    tok = tokenizer(specials + ["<image>", "<global-img>"], "<end_of_utterance>", "<|endoftext|>", template)
    edge = {"longest_edge": 16}
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
        tokenizer=tok,
        image_seq_len=4,
        chat_template=template,
    )
    config = Idefics3Config(
        text_config=_llama_text(tok),
        vision_config=_vit(),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    return _finish(Idefics3ForConditionalGeneration(config), tok, projection_std=0.05), processor


def llava() -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA-1.5's layout: a CLIP vision tower on a 16 px centre crop (16 patches + CLS, CLS
    dropped by the 'default' feature strategy), an MLP projector and a Llama."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    template = _generic_template("<image>")
    tok = tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"], "<|im_end|>", "<|endoftext|>", template
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tok,
        patch_size=4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    config = LlavaConfig(
        text_config=_llama_text(tok),
        vision_config=_vit() | {"model_type": "clip_vision_model", "projection_dim": 32},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return _finish(LlavaForConditionalGeneration(config), tok), processor


def _vit() -> dict[str, object]:
    """A one-layer ViT on 16 px images in 4 px patches (SigLIP, Idefics3 and CLIP configs alike)."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,
    }


ARCHITECTURES: dict[str, Callable[[], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "qwen2_vl": qwen2_vl,
    "gemma3": gemma3,
    "idefics3": idefics3,
    "llava": llava,
}


def build(arch: str, path: Path) -> Path:
    model, processor = ARCHITECTURES[arch]()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def load_on_cpu(model_dir: Path, max_new_tokens: int):
    """A saved tiny model loaded through the product's own registry, on the CPU in float32 (so that
    batched and one-by-one answers match exactly even where a GPU exists)."""
    import os

    from backends.hf_describer import HFDescriber
    from backends.registry import load_describer

    previous = os.environ.get("WDYS_DEVICE")
    os.environ["WDYS_DEVICE"] = "cpu"
    try:
        loaded = load_describer("hf:" + str(model_dir), max_new_tokens=max_new_tokens)
    finally:
        if previous is None:
            os.environ.pop("WDYS_DEVICE")
        else:
            os.environ["WDYS_DEVICE"] = previous
    assert isinstance(loaded, HFDescriber)
    return loaded
