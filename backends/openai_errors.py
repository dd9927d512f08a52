"""How an OpenAI-compatible server's refusals read: a parameter the model does not take, a spent
quota, the server's own words."""

from __future__ import annotations

import openai

MAX_ERROR_CHARS = 300


def rejects(exc: openai.APIStatusError, param: str) -> bool:
    """A 400/422 saying this parameter (or its value) is not supported by the model."""
    if exc.status_code not in (400, 422):
        return False
    message = server_message(exc).lower()
    named = getattr(exc, "param", None) == param or param in message
    refused = any(
        w in message for w in ("unsupported", "not supported", "does not support", "only the default")
    )
    if param == "max_tokens":
        refused = refused or "max_completion_tokens" in message
    return named and refused


# Error codes and types of a spent quota, credit or budget (OpenAI, LiteLLM, OpenRouter, ...), sent
# with 429, 402, 400 or 403 depending on the server: never an answer, whatever the status.
QUOTA_WORDS = ("insufficient_quota", "quota_exceeded", "budget_exceeded", "insufficient_credits", "billing")


def out_of_quota(exc: openai.APIStatusError) -> bool:
    named = f"{getattr(exc, 'code', '')} {getattr(exc, 'type', '')} {server_message(exc)}".lower()
    return any(word in named for word in QUOTA_WORDS)


def server_message(exc: openai.APIStatusError) -> str:
    """The server's own words ('error.message' where it follows OpenAI's shape), short."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:MAX_ERROR_CHARS]
    return str(body if body is not None else exc.message)[:MAX_ERROR_CHARS]


# Statuses of a server that refused one request's input. 413 and 415 always name the payload; a 400
# or 422 counts when its message names the input (a 400 for a spent budget or a broken proxy does not).
ITEM_STATUSES = (400, 413, 415, 422)
INPUT_WORDS = ("image", "input", "content", "prompt", "message", "token", "context", "too large", "too long",
               "size", "format", "decode", "safety", "filter", "policy")  # fmt: skip


def item_refusal(exc: openai.APIStatusError) -> bool:
    """The server refused this item's input: the item's own error, never asked again."""
    if exc.status_code not in ITEM_STATUSES:
        return False
    return exc.status_code in (413, 415) or any(w in server_message(exc).lower() for w in INPUT_WORDS)
