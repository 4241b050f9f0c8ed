"""Parity: how closely an artifact's embeddings match the FP32 torch reference.

``metrics`` computes a ``ParityResult`` from two embedding arrays (numpy
only), ``gates`` checks it against per-precision thresholds, ``table``
renders the outcomes and raises ``ParityGateError`` on failure. Computing
the torch reference embeddings lives in ``reference`` (torch imported there
only, so importing this package stays light).
"""
from __future__ import annotations

from .gates import (
    DEFAULT_GATES,
    METRICS,
    Gate,
    GateOutcome,
    evaluate_gates,
    parse_gate,
    parse_gates,
    precision_family,
    gates_from_dict,
    gates_to_dict,
    resolve_gates,
)
from .metrics import LanguageParity, ParityResult, RetrievalAgreement, compute_parity
from .table import raise_if_failed, render_table

__all__ = [
    "DEFAULT_GATES",
    "METRICS",
    "Gate",
    "GateOutcome",
    "LanguageParity",
    "ParityResult",
    "RetrievalAgreement",
    "compute_parity",
    "evaluate_gates",
    "parse_gate",
    "parse_gates",
    "precision_family",
    "raise_if_failed",
    "render_table",
    "gates_from_dict",
    "gates_to_dict",
    "resolve_gates",
]
