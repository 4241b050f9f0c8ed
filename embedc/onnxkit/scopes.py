"""Module paths from dynamo's name scopes, and the one layer-exclusion grammar.

The dynamo exporter stores each node's scope stack in ``metadata_props``
(``pkg.torch.onnx.name_scopes``) as a Python list literal: the module paths
from the root down, then the op's own name, e.g. ``['', 'encoder', ...,
'encoder.encoder.layer.0.output.dense', 'linear_5']``. A node's module path
is the innermost module (``encoder.encoder.layer.0.output.dense``); nodes
of the root module (the pooling tail) have none (``""``).

Exclusion patterns (every backend's ``exclude`` option) are dotted
module-path fragments matched on dot boundaries anywhere in a path:
``layer.1`` matches ``...layer.1.output.dense`` but not ``...layer.11...``;
``*`` stands for exactly one part, so ``layer.*.output.dense`` is every
FFN output and not ``layer.0.attention.output.dense``.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
_PART = re.compile(r"[A-Za-z0-9_\-]+|\*")
PATTERN_HINT = ("write dotted module-path parts, e.g. 'layer.11.output.dense' or 'layer.*.output.dense' "
                "(* is one part; see the recipe's module names)")


def module_path(node) -> str:
    """The innermost torch module a node came from; ``""`` for the root module or no scopes."""
    raw = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), None)
    if not raw:
        return ""
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return ""
    if not isinstance(scopes, (list, tuple)):
        return ""
    modules = [s for s in scopes[:-1] if isinstance(s, str) and s]  # the last entry is the op itself
    return modules[-1] if modules else ""


def module_paths(model) -> dict[str, str]:
    """Node name -> module path, for every node of the graph."""
    return {n.name: module_path(n) for n in model.graph.node}


def label(node_name: str, path: str) -> str:
    """What reports show for a node: its module path, else its node name."""
    return path or node_name


def parse_patterns(value) -> tuple[str, ...]:
    """Patterns from an option value (one string or a list of strings).
    Raises ``ValueError`` with the offending pattern; callers turn it into
    their own typed error naming the option."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{value!r} is not a pattern or a list of patterns")
    out = []
    for item in items:
        p = item.strip().strip(".")
        if not p or not all(_PART.fullmatch(part) for part in p.split(".")):
            raise ValueError(f"{item!r} is not a module-path pattern")
        out.append(p)
    return tuple(out)


def matches(path: str, patterns: Iterable[str]) -> bool:
    """True when some pattern's parts equal consecutive parts of ``path``."""
    if not path:
        return False
    parts = path.split(".")
    for pattern in patterns:
        want = pattern.split(".")
        for start in range(len(parts) - len(want) + 1):
            if all(w == "*" or w == p for w, p in zip(want, parts[start:start + len(want)])):
                return True
    return False


def select(paths: Mapping[str, str], patterns: Sequence[str]) -> list[str]:
    """The node names (in ``paths`` order) whose module path matches a pattern."""
    return [n for n, p in paths.items() if matches(p, patterns)]


def unmatched(paths: Mapping[str, str], patterns: Sequence[str]) -> list[str]:
    """Patterns that match none of ``paths`` (a typo must not pass silently)."""
    return [p for p in patterns if not any(matches(path, [p]) for path in paths.values())]


def select_strict(paths: Mapping[str, str], patterns: Sequence[str], what: str = "Linear layer") -> list[str]:
    """:func:`select`, but a pattern that matches nothing is an error (exit 2)."""
    from ..errors import TargetError

    missing = unmatched(paths, patterns)
    if missing:
        examples = sorted({p for p in paths.values() if p})[:2]
        raise TargetError(f"exclude pattern {missing[0]!r} matches no {what} of this model",
                          f"use module paths like {', '.join(map(repr, examples)) or 'layer.11.output.dense'}")
    return select(paths, patterns)
