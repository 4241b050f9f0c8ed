"""Outlier handling shared by INT8 and INT4: rank every Linear layer by its
local quantization error on calibration activations, then keep the worst
ones in higher precision until the calibration texts (and only those) meet
targets stricter than the parity gates. Everything measured goes into the recipe."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .calib import Prepared, cosine_stats, embed_feeds, save_model, session

log = logging.getLogger("embedc.targets.tensorrt.backend")

SEARCH_MARGIN = 0.6      # search target = 1 - (1 - gate) * margin: stricter than the gate


@dataclass(frozen=True)
class SearchTargets:
    mean: float
    p01: float
    min: float

    @classmethod
    def for_family(cls, family: str, options: dict) -> SearchTargets:
        from ...parity.gates import DEFAULT_GATES

        g = DEFAULT_GATES[family]
        tgt = {k: 1 - (1 - g.get(k, g["min"])) * SEARCH_MARGIN for k in ("mean", "p01", "min")}
        for k in tgt:
            if options.get(f"search_{k}") is not None:
                tgt[k] = float(options[f"search_{k}"])
        return cls(**{k: round(v, 6) for k, v in tgt.items()})

    def met(self, s: dict) -> bool:
        return s["mean"] >= self.mean and s["p01"] >= self.p01 and s["min"] >= self.min


@dataclass
class Search:
    """Keep the highest-error Linear layers in higher precision until the
    calibration texts meet ``targets``: 0 kept, then 1, 2, 4, 8, 12, 16, 24...
    (bounded by ``max_kept``), then bisect between the last miss and the first hit."""

    build: Callable[[list[str]], Path]       # excluded node names -> quantized model path
    score: Callable[[Path], dict]            # model path -> calibration cosine stats
    targets: SearchTargets
    max_kept: int
    max_trials: int = 9
    trials: list[dict] = field(default_factory=list)

    def _trial(self, excluded: list[str]) -> tuple[Path, dict]:
        t = time.perf_counter()
        path = self.build(excluded)
        stats = self.score(path)
        self.trials.append({"kept": len(excluded), **stats, "seconds": round(time.perf_counter() - t, 1)})
        log.info("  %d layers kept: calibration cosine mean %.5f p01 %.5f min %.5f",
                 len(excluded), stats["mean"], stats["p01"], stats["min"])
        return path, stats

    def run(self, forced: list[str], ranked: Callable[[Path], list[str]], enabled: bool
            ) -> tuple[list[str], Path, bool]:
        path, stats = self._trial(forced)
        if self.targets.met(stats) or not enabled:
            return forced, path, self.targets.met(stats)
        order = [n for n in ranked(path) if n not in forced]
        sizes = _schedule(min(self.max_kept, len(order)))
        best = (stats, forced, path)
        lo = 0
        for k in sizes:
            if len(self.trials) >= self.max_trials:
                break
            excl = forced + order[:k]
            path, stats = self._trial(excl)
            if _better(stats, best[0]):
                best = (stats, excl, path)
            if self.targets.met(stats):
                hi, hit = k, (excl, path)
                while hi - lo > 1 and len(self.trials) < self.max_trials:
                    mid = (lo + hi) // 2
                    p2, s2 = self._trial(forced + order[:mid])
                    if self.targets.met(s2):
                        hi, hit = mid, (forced + order[:mid], p2)
                    else:
                        lo = mid
                return hit[0], hit[1], True
            lo = k
        return best[1], best[2], False


def _schedule(limit: int) -> list[int]:
    steps = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]
    out = [k for k in steps if k < limit] + [limit]
    return sorted(set(k for k in out if k > 0))


def _better(a: dict, b: dict) -> bool:
    key = lambda s: (s["min"], s["mean"]) if math.isfinite(s["mean"]) else (-1.0, -1.0)  # noqa: E731
    return key(a) > key(b)


def capture_inputs(model_path: Path, tensors: list[str], feeds: Sequence[dict], *, rows: int = 2048,
                   threads: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A sample of ``rows`` attended-token rows of each named float tensor
    (flattened to [rows, last_dim]) over the calibration feeds, from the FP32 model."""
    import onnx

    model = onnx.load(str(model_path))
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    aug = Path(model_path).with_name("capture.onnx")
    save_model(model, aug)
    del model
    sess = session(aug, threads, exact=False)
    names = {i.name for i in sess.get_inputs()}
    rng = np.random.default_rng(seed)
    per_feed = max(1, math.ceil(rows / max(len(feeds), 1)))
    got: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for f in feeds:
        outs = sess.run(tensors, {k: v for k, v in f.items() if k in names})
        mask = f.get("attention_mask")
        for t, x in zip(tensors, outs):
            x2 = x.reshape(-1, x.shape[-1])
            if mask is not None and mask.size == x2.shape[0]:
                x2 = x2[mask.reshape(-1) > 0]
            pick = rng.choice(len(x2), size=min(per_feed, len(x2)), replace=False)
            got[t].append(x2[pick].astype(np.float32))
    del sess
    aug.unlink(missing_ok=True)
    return {t: np.concatenate(v) for t, v in got.items()}


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


# ---- wiring used by the recipes -----------------------------------------------------------------

def exclude_patterns(options: dict) -> list[str]:
    """``options["exclude"]``: module-path substrings (one string or a list) kept in higher precision."""
    value = options.get("exclude") or []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def forced_nodes(prep: Prepared, patterns: list[str]) -> list[str]:
    return [n.name for n in prep.candidates if any(p in prep.scopes[n.name] for p in patterns)]


def scorer(prep: Prepared) -> Callable[[Path], dict]:
    feeds = [prep.feeds[i] for i in prep.search_idx]

    def score(path: Path) -> dict:
        cand = embed_feeds(session(path, prep.threads, exact=False), feeds)
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
            self.acts = capture_inputs(prep.path, sorted({n.input[0] for n in prep.candidates}),
                                       [prep.feeds[i] for i in prep.search_idx], threads=prep.threads)
        self.errors = local_errors(prep.model, quant_path, prep.candidates, self.acts)
        return sorted(self.errors, key=self.errors.get, reverse=True)


def kept_report(prep: Prepared, kept: list[str], errors: dict[str, float]) -> list[dict]:
    return [{"node": n, "module": prep.scopes.get(n, n),
             **({"local_error": round(errors[n], 5)} if n in errors else {})} for n in kept]
