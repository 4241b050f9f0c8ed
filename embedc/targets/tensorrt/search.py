"""The TensorRT recipes' use of the shared sensitivity search
(:mod:`embedc.onnxkit.search`): Linear layers are ranked by their local
relative output error with the scales the candidate model actually uses,
candidates are scored on an evenly spaced subset of the calibration texts,
and the targets are stricter than the parity gates. Everything measured goes
into the recipe."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...onnxkit.activations import capture
from ...onnxkit.metrics import cosine_stats
from ...onnxkit.session import cpu_session, embed_feeds
from .prepared import SEARCH_LEVEL, Prepared

SEARCH_MARGIN = 0.6      # search target = 1 - (1 - gate) * margin: stricter than the gate


@dataclass(frozen=True)
class SearchTargets:
    mean: float
    p01: float
    min: float

    @classmethod
    def defaults(cls, family: str) -> SearchTargets:
        """Targets derived from the default parity gate of the precision family."""
        from ...parity.gates import DEFAULT_GATES

        g = DEFAULT_GATES[family]
        return cls(**{k: round(1 - (1 - g.get(k, g["min"])) * SEARCH_MARGIN, 6) for k in ("mean", "p01", "min")})

    @classmethod
    def from_options(cls, options: dict) -> SearchTargets:
        return cls(options["search_mean"], options["search_p01"], options["search_min"])

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "p01": self.p01, "min": self.min}


def relative_error(x: np.ndarray, w: np.ndarray, xq: np.ndarray, wq: np.ndarray) -> float:
    """Mean over tokens of each token's relative output error. Per token, not over
    the whole matrix: a few outlier tokens set a per-tensor scale that crushes
    every other token, yet dominate a matrix norm and hide that damage."""
    ref = x @ w
    err = np.linalg.norm(xq @ wq - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    return float(err.mean())


def _dq_value(g, inits, tensor: str) -> np.ndarray | None:
    """The dequantized value of ``tensor`` if a DequantizeLinear of constants produces it."""
    from onnx import numpy_helper

    prod = g.get(tensor)
    if prod is None or prod.op_type != "DequantizeLinear" or prod.input[0] not in inits:
        return None
    q = numpy_helper.to_array(inits[prod.input[0]]).astype(np.float32)
    s = numpy_helper.to_array(inits[prod.input[1]]).astype(np.float32)
    axis = next((a.i for a in prod.attribute if a.name == "axis"), 1)
    block = next((a.i for a in prod.attribute if a.name == "block_size"), 0)
    if block:
        s = np.repeat(s, block, axis=axis)[tuple(slice(0, d) for d in q.shape)]
    elif s.ndim == 1 and s.size > 1:
        shape = [1] * q.ndim
        shape[axis] = s.size
        s = s.reshape(shape)
    return q * s


def _act_scale(g, inits, tensor: str) -> float | None:
    from onnx import numpy_helper

    prod = g.get(tensor)
    if prod is None or prod.op_type != "DequantizeLinear":
        return None
    return float(numpy_helper.to_array(inits[prod.input[1]]).reshape(-1)[0])


def local_errors(fp32_model, quant_path: Path, nodes: list, acts: dict[str, np.ndarray]) -> dict[str, float]:
    """Relative output error of each quantized Linear alone: ``|Q(x) Q(W) - x W| / |x W|``
    on captured calibration rows, with the scales the quantized model actually uses."""
    import onnx
    from onnx import numpy_helper

    qm = onnx.load(str(quant_path))
    inits = {i.name: i for i in qm.graph.initializer}
    prod = {o: n for n in qm.graph.node for o in n.output}
    qnodes = {n.name: n for n in qm.graph.node if n.op_type == "MatMul"}
    finits = {i.name: i for i in fp32_model.graph.initializer}
    out = {}
    for n in nodes:
        qn = qnodes.get(n.name)
        x = acts.get(n.input[0])
        if qn is None or x is None:
            continue
        w = numpy_helper.to_array(finits[n.input[1]]).astype(np.float32)
        wq = _dq_value(prod, inits, qn.input[1])
        wq = w if wq is None else wq
        s = _act_scale(prod, inits, qn.input[0])
        xq = x if s is None else np.clip(np.round(x / s), -128, 127) * s
        out[n.name] = relative_error(x, w, xq, wq)
    return out


def capture_inputs(prep: Prepared, feeds) -> dict[str, np.ndarray]:
    """Sampled FP32 rows of every Linear input over ``feeds`` (:func:`embedc.onnxkit.activations.capture`)."""
    tensors = sorted({n.input[0] for n in prep.candidates})
    return capture(prep.path, tensors, feeds, threads=prep.threads, level=SEARCH_LEVEL,
                   scratch=prep.path.parent).samples


def scorer(prep: Prepared) -> Callable[[Path], dict]:
    feeds = [prep.feeds[i] for i in prep.search_idx]

    def score(path: Path) -> dict:
        cand = embed_feeds(cpu_session(path, prep.threads, level=SEARCH_LEVEL), feeds)
        return cosine_stats(prep.reference[prep.search_idx], cand)
    return score


class Ranker:
    """Ranks the Linear layers by local error (highest first); keeps the errors for the recipe."""

    def __init__(self, prep: Prepared, acts: dict[str, np.ndarray] | None = None):
        self.prep = prep
        self.acts = acts
        self.errors: dict[str, float] = {}

    def __call__(self, quant_path: Path) -> list[str]:
        prep = self.prep
        if self.acts is None:
            self.acts = capture_inputs(prep, [prep.feeds[i] for i in prep.search_idx])
        self.errors = local_errors(prep.model, quant_path, prep.candidates, self.acts)
        return sorted(self.errors, key=self.errors.get, reverse=True)


def kept_report(prep: Prepared, kept: list[str], errors: dict[str, float]) -> list[dict]:
    return [{"node": n, "module": prep.scopes.get(n) or n,
             **({"local_error": round(errors[n], 5)} if n in errors else {})} for n in kept]
