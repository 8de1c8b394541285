"""Every option of every script under scripts/ says what it does and shows its default."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parents[2] / "scripts").rglob("*.py"))


def _parsers(tree: ast.AST) -> tuple[list[ast.Call], list[ast.Call]]:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    named = [c for c in calls if isinstance(c.func, (ast.Attribute, ast.Name))]
    name = lambda c: c.func.attr if isinstance(c.func, ast.Attribute) else c.func.id  # noqa: E731
    return ([c for c in named if name(c) == "ArgumentParser"],
            [c for c in named if name(c) == "add_argument"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_option_has_help_and_a_shown_default(script):
    source = script.read_text()
    tree = ast.parse(source)
    parsers, options = _parsers(tree)
    for call in options:
        keywords = {k.arg for k in call.keywords}
        assert "help" in keywords, f"{script.name}:{call.lineno} has no help text"
    for call in parsers:
        formatter = next((ast.unparse(k.value) for k in call.keywords
                          if k.arg == "formatter_class"), "")
        if formatter.isidentifier():  # a local name for it: `fmt = argparse.Argument...`
            formatter = source.split(f"{formatter} = ", 1)[-1].split("\n", 1)[0]
        assert "ArgumentDefaultsHelpFormatter" in formatter, (
            f"{script.name}:{call.lineno}: the help does not show the defaults")
