"""How much of the text tower's time is padding: CIFAR-10's 800 template prompts (10 classes x 80
templates) through a random ViT-B-32 text tower at the full 77-token context, against the same
prompts cut to the longest one (a causal tower's end-of-text features do not depend on the padding
after them). Prints both times, alternating, and the largest difference of the embeddings.

    python -m perf.text_trim_probe
"""

from __future__ import annotations

import time

import open_clip
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def trimmed_text_features(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)` computed on the positions up to the longest prompt's end only."""
    n = int((tokens != 0).sum(1).max())
    x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    return x[torch.arange(x.shape[0]), tokens[:, :n].argmax(dim=-1)] @ model.text_projection


def main(batch_size: int = 64, rounds: int = 2) -> None:
    model = open_clip.create_model("ViT-B-32").eval()
    tokens = open_clip.get_tokenizer("ViT-B-32")([t(c) for c in CIFAR10 for t in OPENAI_IMAGENET_TEMPLATES])
    longest = int((tokens != 0).sum(1).max())
    print(f"{len(tokens)} prompts, the longest {longest} of {tokens.shape[1]} tokens")
    batches = [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
    with torch.inference_mode():
        for _ in range(rounds):
            timed = {}
            for name, encode in (
                ("full", model.encode_text),
                ("trimmed", lambda t: trimmed_text_features(model, t)),
            ):
                started = time.perf_counter()
                timed[name] = torch.cat([encode(b) for b in batches])
                print(f"  {name:<8} {time.perf_counter() - started:6.2f} s", flush=True)
            print(f"  largest difference {(timed['full'] - timed['trimmed']).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
