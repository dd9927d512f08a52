"""What an `offline:` id names and the settings it implies (the cache key), without torch: a run
whose shards are all cached checks its ids and keys with this and never imports the models."""

from __future__ import annotations

from method.prompts import MAX_NEW_TOKENS

TOP_K = 10  # ImageNet labels in an image's ConSE embedding

# name -> the EfficientNet-Lite variant behind it; the second entries exist so that changing the
# encoder or the describer can be exercised offline.
OFFLINE_ENCODERS = {"conse-lite0-minilm": "lite0", "conse-lite2-minilm": "lite2"}
OFFLINE_DESCRIBERS = {"lite2-labels": "lite2", "lite0-labels": "lite0"}


def settings_for(spec: str, max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, object]:
    """What the stand-in's answers depend on (it generates no tokens: `max_new_tokens` is moot)."""
    return {
        "backend": "offline",
        "model": spec,
        "weights": OFFLINE_DESCRIBERS[spec],
        "top_labels": 3,
        "conse_k": TOP_K,
    }
