"""Parity metrics, gates and the failure table, on synthetic embeddings."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from embedc.errors import SpecError, ArtifactError, EmbedcError, ParityGateError, TargetError, UsageError
from embedc.parity import (
    DEFAULT_GATES,
    METRICS,
    Gate,
    ParityResult,
    compute_parity,
    evaluate_gates,
    parse_gate,
    parse_gates,
    precision_family,
    raise_if_failed,
    render_table,
    resolve_gates,
)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _split(langs: list[str], per_lang: int, n_queries: int):
    """ids/langs/kinds for ``per_lang`` texts per language, the first
    ``n_queries`` of each language being queries."""
    ids, lang_list, kinds = [], [], []
    for lang in langs:
        for i in range(per_lang):
            kind = "query" if i < n_queries else "passage"
            ids.append(f"{lang}-{kind[0]}{i:02d}")
            lang_list.append(lang)
            kinds.append(kind)
    return ids, lang_list, kinds


def _rotate(row: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A vector at exactly cosine ``cos`` to ``row`` (and a different norm)."""
    r = row / np.linalg.norm(row)
    u = rng.standard_normal(r.shape)
    u -= (u @ r) * r
    u /= np.linalg.norm(u)
    return 3.0 * (cos * r + math.sqrt(1.0 - cos * cos) * u)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def split(rng):
    ids, langs, kinds = _split(["deu", "eng", "yor"], per_lang=16, n_queries=4)
    ref = rng.standard_normal((len(ids), 32)).astype(np.float32)
    return ref, ids, langs, kinds


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------

def test_identical_embeddings_are_perfect(split):
    ref, ids, langs, kinds = split
    # a rescaled copy: parity judges direction only
    res = compute_parity(ref, ref * 2.5, ids=ids, langs=langs, kinds=kinds)
    assert res.mean == pytest.approx(1.0, abs=1e-12)
    assert res.min == pytest.approx(1.0, abs=1e-12)
    assert res.p01 == pytest.approx(1.0, abs=1e-12)
    assert res.n_texts == 48
    assert set(res.languages) == {"deu", "eng", "yor"}
    assert all(lp.count == 16 for lp in res.languages.values())
    r = res.retrieval
    assert r is not None
    assert (r.n_queries, r.n_passages, r.k, r.requested_k) == (12, 36, 10, 10)
    assert r.topk_overlap == 1.0 and r.top1_agreement == 1.0
    assert r.worst_queries == () and r.top1_mismatches == ()
    # every language has 12 >= 10 passages: within-language retrieval is measured
    assert all(lp.retrieval is not None and lp.retrieval.topk_overlap == 1.0
               for lp in res.languages.values())
    assert all(o.passed for o in evaluate_gates(res, resolve_gates("fp32")))


def test_perturbing_one_language_lowers_only_that_language(split, rng):
    ref, ids, langs, kinds = split
    cand = ref.astype(np.float64).copy()
    targets = {i: c for i, c in zip([i for i, lang in enumerate(langs) if lang == "yor"],
                                    np.linspace(0.95, 0.99, 16))}
    for i, c in targets.items():
        cand[i] = _rotate(ref[i].astype(np.float64), c, rng)
    res = compute_parity(ref, cand, ids=ids, langs=langs, kinds=kinds)

    yor_mean = float(np.mean(list(targets.values())))
    assert res.languages["yor"].mean == pytest.approx(yor_mean, abs=1e-9)
    assert res.languages["yor"].min == pytest.approx(0.95, abs=1e-9)
    for lang in ("deu", "eng"):
        assert res.languages[lang].mean == pytest.approx(1.0, abs=1e-12)
        assert res.languages[lang].min == pytest.approx(1.0, abs=1e-12)
    assert res.mean == pytest.approx((2.0 + yor_mean) / 3.0, abs=1e-9)

    (outcome,) = evaluate_gates(res, [parse_gate("lang_mean>=0.99")])
    assert not outcome.passed
    assert [lang for lang, _ in outcome.languages] == ["yor"]
    assert outcome.observed == pytest.approx(yor_mean, abs=1e-9)
    assert outcome.worst and all(lang == "yor" for _, lang, _ in outcome.worst)
    assert outcome.worst[0][0] == "yor-q00"  # the 0.95 row

    (lang_min,) = evaluate_gates(res, [Gate("lang_min", 0.96)])
    assert [lang for lang, _ in lang_min.languages] == ["yor"]
    assert all(c < 0.96 for _, _, c in lang_min.worst)


def test_min_gate_failure_lists_worst_texts(split, rng):
    ref, ids, langs, kinds = split
    cand = ref.astype(np.float64).copy()
    planted = {"eng-p07": 0.90, "deu-q01": 0.93, "yor-p11": 0.97, "eng-q02": 0.985}
    for tid, c in planted.items():
        i = ids.index(tid)
        cand[i] = _rotate(ref[i].astype(np.float64), c, rng)
    res = compute_parity(ref, cand, ids=ids, langs=langs, kinds=kinds)
    assert res.min == pytest.approx(0.90, abs=1e-9)
    assert [tid for tid, _ in res.worst[:4]] == ["eng-p07", "deu-q01", "yor-p11", "eng-q02"]

    (o,) = evaluate_gates(res, [parse_gate("min>=0.98")])
    assert not o.passed and o.status == "fail"
    assert [tid for tid, _, _ in o.worst] == ["eng-p07", "deu-q01", "yor-p11"]
    assert [lang for _, lang, _ in o.worst] == ["eng", "deu", "yor"]
    assert [c for _, _, c in o.worst] == pytest.approx([0.90, 0.93, 0.97], abs=1e-9)
    assert "3 of 48 texts" in o.note

    (mean_gate,) = evaluate_gates(res, [Gate("mean", 0.999)])
    assert not mean_gate.passed
    assert len(mean_gate.worst) == 5  # mean failures list the 5 worst overall
    assert mean_gate.worst[0][0] == "eng-p07"


def test_permuted_passages_top1_by_hand():
    # passages p0..p3 are the unit vectors e1..e4; queries lean on one passage
    # and half on the next, so the reference ranking is obvious:
    #   q0 = (1, .5, 0, 0)  -> p0, p1, p2, p3
    #   q1 = (0, 1, .5, 0)  -> p1, p2, p0, p3
    #   q2 = (0, 0, 1, .5)  -> p2, p3, p0, p1
    # The candidate swaps the embeddings of p0 and p1. Candidate top-1:
    #   q0 -> p1 (changed), q1 -> p0 (changed), q2 -> p2 (same): agreement 1/3.
    # Top-2 sets, ref vs cand: q0 {p0,p1} vs {p1,p0} -> 1; q1 {p1,p2} vs {p0,p2}
    #   -> 1/2; q2 {p2,p3} vs {p2,p3} -> 1. Mean overlap 5/6.
    queries = np.array([[1, .5, 0, 0], [0, 1, .5, 0], [0, 0, 1, .5]], dtype=np.float32)
    passages = np.eye(4, dtype=np.float32)
    ref = np.vstack([queries, passages])
    cand = np.vstack([queries, passages[[1, 0, 2, 3]]])
    ids = ["q0", "q1", "q2", "p0", "p1", "p2", "p3"]
    langs = ["eng"] * 7
    kinds = ["query"] * 3 + ["passage"] * 4

    res = compute_parity(ref, cand, ids=ids, langs=langs, kinds=kinds, top_k=2)
    r = res.retrieval
    assert r.k == 2 and not r.k_reduced
    assert r.top1_agreement == pytest.approx(1 / 3)
    assert r.topk_overlap == pytest.approx(5 / 6)
    assert r.top1_mismatches == (("q0", "p0", "p1"), ("q1", "p1", "p0"))
    assert r.worst_queries == (("q1", 0.5),)
    # swapped passages have cosine 0 with their reference
    assert res.cosines["p0"] == pytest.approx(0.0, abs=1e-12)
    assert res.cosines["p2"] == pytest.approx(1.0, abs=1e-12)

    # default k=10 with 4 passages: k is reduced to 4 and recorded
    res10 = compute_parity(ref, cand, ids=ids, langs=langs, kinds=kinds)
    r10 = res10.retrieval
    assert (r10.k, r10.requested_k, r10.k_reduced) == (4, 10, True)
    assert r10.topk_overlap == 1.0
    assert r10.top1_agreement == pytest.approx(1 / 3)
    # 4 passages < 10: no within-language retrieval
    assert res10.languages["eng"].retrieval is None

    (o,) = evaluate_gates(res10, [parse_gate("top1_agreement>=0.5")])
    assert not o.passed and o.observed == pytest.approx(1 / 3)
    assert [q for q, _ in o.queries] == ["q0", "q1"]
    assert "k=4 (only 4 passages)" in o.note


def test_no_queries_gives_no_retrieval_and_skipped_gates(rng):
    ref = rng.standard_normal((6, 8))
    ids = [f"t{i}" for i in range(6)]
    res = compute_parity(ref, ref, ids=ids, langs=["eng"] * 6, kinds=["passage"] * 6)
    assert res.retrieval is None
    outcomes = evaluate_gates(res, resolve_gates("int8"))
    skipped = {o.metric for o in outcomes if o.skipped}
    assert skipped == {"top10_overlap", "top1_agreement"}
    assert all(o.passed for o in outcomes)
    assert "SKIP" in render_table(outcomes)
    raise_if_failed("x", outcomes)  # skips do not fail


def test_invalid_inputs_raise_typed_errors(split):
    ref, ids, langs, kinds = split
    kw = dict(ids=ids, langs=langs, kinds=kinds)
    bad = ref.astype(np.float64).copy()
    bad[5, 3] = np.nan
    with pytest.raises(ArtifactError, match="NaN") as ei:
        compute_parity(ref, bad, **kw)
    assert ids[5] in str(ei.value)
    with pytest.raises(EmbedcError) as ei:
        compute_parity(bad, ref, **kw)
    assert not isinstance(ei.value, ArtifactError)  # a broken reference is not the artifact's fault
    zero = ref.copy()
    zero[2] = 0
    with pytest.raises(ArtifactError, match="zero norm"):
        compute_parity(ref, zero, **kw)
    with pytest.raises(ValueError, match="shape mismatch"):
        compute_parity(ref, ref[:, :16], **kw)
    with pytest.raises(ValueError, match="ids"):
        compute_parity(ref, ref, ids=ids[:-1], langs=langs, kinds=kinds)
    with pytest.raises(ValueError, match="unique"):
        compute_parity(ref, ref, ids=[ids[0]] + ids[:-1], langs=langs, kinds=kinds)
    with pytest.raises(ValueError, match="kinds"):
        compute_parity(ref, ref, ids=ids, langs=langs, kinds=["doc"] * len(ids))
    with pytest.raises(ValueError, match="top_k"):
        compute_parity(ref, ref, **kw, top_k=0)


def test_to_dict_from_dict_round_trip(split, rng):
    ref, ids, langs, kinds = split
    cand = ref + 0.05 * rng.standard_normal(ref.shape)
    res = compute_parity(ref, cand, ids=ids, langs=langs, kinds=kinds)
    d = res.to_dict()
    text = json.dumps(d)  # JSON-ready
    assert d["per_text"][ids[0]] == round(res.cosines[ids[0]], 6)
    assert len(d["per_text"]) == 48
    back = ParityResult.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert back.languages["yor"].retrieval.k == 10
    assert back.worst[0][0] == res.worst[0][0]
    statuses = [o.status for o in evaluate_gates(res, resolve_gates("int8"))]
    assert [o.status for o in evaluate_gates(back, resolve_gates("int8"))] == statuses
    with pytest.raises(ArtifactError):
        ParityResult.from_dict({"schema": 1, "mean": 1.0})


# ---------------------------------------------------------------------------
# gates
# ---------------------------------------------------------------------------

def test_parse_gates():
    assert parse_gate("mean>=0.995") == Gate("mean", 0.995)
    assert parse_gate(" top10_overlap >= 0.8 ") == Gate("top10_overlap", 0.8)
    assert parse_gates("mean>=0.995,min>=0.98") == [Gate("mean", 0.995), Gate("min", 0.98)]
    assert parse_gates(["mean>=0.99", "p01>=0.97,"]) == [Gate("mean", 0.99), Gate("p01", 0.97)]
    assert parse_gates("") == []
    assert str(Gate("min", 0.98)) == "min>=0.98"


@pytest.mark.parametrize("text, fragment", [
    ("mean>=0.995,foo>=0.9", "'foo>=0.9'"),
    ("mean>0.9", "only '>='"),
    ("mean<=0.9", "only '>='"),
    ("mean>=abc", "not a number"),
    ("mean>=1.5", "[-1, 1]"),
    ("mean", "expected METRIC>=VALUE"),
    ("min>=0.9,min>=0.8", "already set"),
])
def test_parse_errors_name_the_token(text, fragment):
    with pytest.raises(UsageError) as ei:
        parse_gates(text)
    assert ei.value.exit_code == 2
    assert fragment in str(ei.value)


def test_unknown_metric_lists_valid_metrics():
    with pytest.raises(UsageError) as ei:
        parse_gate("cosine>=0.9")
    msg = str(ei.value)
    assert "'cosine'" in msg
    assert all(m in msg for m in METRICS)


def test_precision_families():
    for name in ("int8", "int8-dynamic", "int8-static", "int8-weights", "INT8_static"):
        assert precision_family(name) == "int8"
    assert precision_family("int4") == "int4"
    assert precision_family("int4-rtn") == "int4"
    assert precision_family("fp16") == "fp16"
    with pytest.raises(TargetError, match="bf16"):
        precision_family("bf16")


def test_default_gates_are_at_least_the_floor():
    floor = {
        "fp32": {"min": 0.9999},
        "fp16": {"min": 0.9995},
        "int8": {"mean": 0.995, "min": 0.98, "lang_mean": 0.99},
        "int4": {"mean": 0.98, "min": 0.95},
    }
    assert set(DEFAULT_GATES) >= set(floor)
    for family, gates in floor.items():
        for metric, threshold in gates.items():
            assert DEFAULT_GATES[family][metric] >= threshold, (family, metric)
    for family, gates in DEFAULT_GATES.items():
        assert set(gates) <= set(METRICS)
        assert {"top10_overlap", "top1_agreement"} <= set(gates), family


def test_resolve_gates_precedence_and_sources():
    layers = [("spec [gates]", {"*": "min>=0.97", "int8": "mean>=0.99"}),
              ('spec [gates.models."m"]', {"int8": "mean>=0.993", "int8-static": "p01>=0.98", "int4": "mean>=0.5"}),
              ("--gate", {"int8-static": "min>=0.9"})]
    gates = resolve_gates("int8-static", layers)
    by = {g.metric: g for g in gates}
    assert (by["min"].threshold, by["min"].source) == (0.9, "--gate int8-static")          # the run wins
    assert (by["mean"].threshold, by["mean"].source) == (0.993, 'spec [gates.models."m"] int8')  # model > spec
    assert (by["p01"].threshold, by["p01"].source) == (0.98, 'spec [gates.models."m"] int8-static')
    assert by["lang_mean"].source == "default int8" and by["lang_mean"].threshold == DEFAULT_GATES["int8"]["lang_mean"]
    assert [g.metric for g in gates] == [m for m in METRICS if m in by]  # stable order
    assert {g.metric: g.threshold for g in resolve_gates("int4")} == DEFAULT_GATES["int4"]
    # stored gates (an artifact's) as the base, overridden by a run
    stored = resolve_gates("int8-static", layers)
    again = resolve_gates("int8-static", [("--gate", {"*": "lang_min>=0.9"})], base=stored)
    assert {g.metric: (g.threshold, g.source) for g in again if g.metric != "lang_min"} == \
        {g.metric: (g.threshold, g.source) for g in stored}
    assert Gate("lang_min", 0.9) in again
    with pytest.raises(SpecError, match="bogus"):
        resolve_gates("int8", [("spec", {"int8": {"bogus": 0.9}})])


# ---------------------------------------------------------------------------
# table and failure
# ---------------------------------------------------------------------------

def test_table_and_raise_if_failed(split, rng):
    ref, ids, langs, kinds = split
    cand = ref.astype(np.float64).copy()
    for i in [i for i, lang in enumerate(langs) if lang == "yor"]:
        cand[i] = _rotate(ref[i].astype(np.float64), 0.96, rng)
    i = ids.index("eng-p09")
    cand[i] = _rotate(ref[i].astype(np.float64), 0.9, rng)
    res = compute_parity(ref, cand, ids=ids, langs=langs, kinds=kinds)
    outcomes = evaluate_gates(res, resolve_gates("int8-static"))
    failed = {o.metric for o in outcomes if not o.passed}
    assert {"mean", "min", "p01", "lang_mean"} <= failed

    table = render_table(outcomes)
    assert "\x1b" not in table
    lines = table.splitlines()
    assert lines[0].split() == ["STATUS", "GATE", "OBSERVED", "DETAIL"]
    col = lines[0].index("GATE")
    assert all(line[col - 2:col] == "  " for line in lines[1:])  # fixed columns
    assert "FAIL" in table and "PASS" in table
    assert "language yor" in table
    assert "eng-p09 [eng] 0.900000" in table
    assert "lang_mean>=0.99" in table

    with pytest.raises(ParityGateError) as ei:
        raise_if_failed("e5-small/ort-int8-static", outcomes)
    err = ei.value
    assert err.exit_code == 3
    assert "\n" not in err.message
    assert err.message.startswith(f"{len(failed)} of {len(outcomes)} parity gates failed for "
                                  "e5-small/ort-int8-static")
    assert "lang_mean>=0.99" in err.message and "yor" in err.message
    assert err.outcomes == outcomes
    assert err.table.startswith("parity gates for e5-small/ort-int8-static")
    assert "eng-p09" in err.table

    passing = [o for o in outcomes if o.passed]
    raise_if_failed("e5-small/ort-int8-static", passing)  # no failures: no exception


def test_length_batches_cap_padded_tokens_for_long_inputs():
    from embedc.parity.harness import TOKEN_BUDGET, length_batches

    rng = np.random.default_rng(0)
    short = rng.integers(1, 513, size=100)
    plain = np.argsort(short, kind="stable")
    got = length_batches(short, 16)
    # up to 512 tokens: the plain sorted batches of 16
    assert [b.tolist() for b in got] == [plain[i:i + 16].tolist() for i in range(0, 100, 16)]
    long = np.concatenate([short, rng.integers(1500, 2049, size=20), [9000]])
    batches = length_batches(long, 16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(long)))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * long[b].max() <= TOKEN_BUDGET   # a text over the budget runs alone
    assert any(len(b) == 4 and long[b].max() > 1500 for b in batches)
