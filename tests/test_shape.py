"""The code keeps a shape a researcher can read in one sitting: no product function over 60 lines,
no product module over 400, and the flow's body (what it wires) at most 25 lines. Read from the
source with `ast`, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_layers import LAYERS

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
MAX_FLOW_BODY_LINES = 25


def product_modules() -> list[Path]:
    return [p for top in LAYERS for p in sorted((REPO / top).rglob("*.py"))]


def functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of the body below the signature and the docstring."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return (body[-1].end_lineno or 0) - body[0].lineno + 1 if body else 0


def test_no_product_function_is_over_60_lines():
    long = [
        f"{p.relative_to(REPO)}:{f.name} {(f.end_lineno or 0) - f.lineno + 1}"
        for p in product_modules()
        for f in functions(p)
        if (f.end_lineno or 0) - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_product_module_is_over_400_lines():
    long = [
        f"{p.relative_to(REPO)} {n}"
        for p in product_modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


def test_the_flow_only_wires_its_stages_in_a_short_body():
    (flow,) = [f for f in functions(REPO / "flows" / "benchmark.py") if f.name == "benchmark"]
    assert body_lines(flow) <= MAX_FLOW_BODY_LINES
