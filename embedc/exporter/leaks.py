"""Work around a reference leak in onnxscript's rewriter (0.7.x).

``torch.onnx.export(dynamo=True)`` optimizes the exported graph with
onnxscript's module-level rewrite rules, and each rule's
``SimplePatternMatcher`` keeps the last graph it matched in ``_graph``. That
graph holds the exported model's initializers, which wrap the torch
parameters: after the export the whole FP32 model stays alive (found tracing
referrers of a parameter; on a 0.6B decoder it kept 2.4 GB through the
export's ONNX Runtime check). Clearing those fields frees it."""
from __future__ import annotations

import sys


def release_rewriter_graphs() -> int:
    """Drop the graphs onnxscript's loaded rule sets still hold; returns how many matchers were reset."""
    if "onnxscript.rewriter._rewrite_rule" not in sys.modules:
        return 0  # no dynamo export ran in this process (a hand-written family's): no rule holds a graph
    try:
        from onnxscript.rewriter._rewrite_rule import RewriteRule, RewriteRuleSet
    except ImportError:  # another onnxscript layout: nothing known to reset
        return 0
    reset = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("onnxscript.rewriter"):
            continue
        for obj in list(vars(module).values()):
            rules = obj.rules if isinstance(obj, RewriteRuleSet) else [obj] if isinstance(obj, RewriteRule) else []
            for rule in rules:
                matcher = getattr(rule, "_matcher", None)
                if getattr(matcher, "_graph", None) is None:
                    continue
                matcher._graph = None
                if hasattr(matcher, "_tracer"):
                    matcher._tracer = None
                if hasattr(matcher, "_init_match"):
                    matcher._init_match(0)   # a fresh match state: drops the bound nodes and values
                reset += 1
    return reset
