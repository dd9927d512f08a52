"""A command line made from a flow's own parameter schema: each parameter's flag, type, default,
choices, range and help come from the flow's signature and docstring (what Prefect shows a
deployment), so they are written in one place. A value out of range is a one-line usage error."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from prefect import Flow

_TYPES: dict[str, Callable[[str], Any]] = {"integer": int, "number": float, "string": str}


def _plain(schema: dict) -> dict:
    """The non-null alternative of an optional parameter's schema."""
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            return {**option, **{k: v for k, v in schema.items() if k != "anyOf"}}
    return schema


def _value_type(name: str, schema: dict) -> Callable[[str], Any]:
    """Converts one command-line word and checks the schema's range."""
    convert = _TYPES[schema.get("type", "string")]
    low = schema.get("minimum")

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {schema.get('type')}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{name} must be at least {low}, got {value}")
        return value

    return parse


def add_flow_parameters(parser: argparse.ArgumentParser, flow: Flow, skip: tuple[str, ...] = ()) -> None:
    """One `--flag` per parameter of `flow` (except `skip`), in the signature's order."""
    properties = flow.parameters.model_dump()["properties"]
    for name, raw in sorted(properties.items(), key=lambda item: item[1].get("position", 0)):
        if name in skip:
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", **argument(name, _plain(raw)))


def argument(name: str, schema: dict) -> dict[str, Any]:
    """`add_argument` keywords for one parameter's schema."""
    default = schema.get("default")
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    described = f"{schema.get('description', '')} (default: {'none' if default is None else shown})"
    options: dict[str, Any] = {"default": default, "help": described}
    if schema.get("type") == "boolean":
        options["action"] = argparse.BooleanOptionalAction
    elif schema.get("type") == "array":
        items = schema.get("items", {})
        options |= {"nargs": "+", "type": _value_type(name, items)}
        if "enum" in items:
            options["choices"] = items["enum"]
    else:
        options["type"] = _value_type(name, schema)
    options["help"] = options["help"].replace("%", "%%")
    return options
