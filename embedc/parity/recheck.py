"""Re-check an existing artifact against the torch reference: the command a
CI pipeline runs after a model or runtime change. It judges with the gates
the build resolved and stored in the artifact (``--gate`` overrides them)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..artifact import read_meta, verify_files
from ..errors import ArtifactError
from .gates import evaluate_gates, gates_from_dict, resolve_gates
from .metrics import compute_parity


def _spec_for(meta: dict):
    from ..spec import BuildSpec, CalibrationSpec, ModelSpec

    model = meta["model"]
    name = model["path"] if Path(model["path"]).is_dir() else model["name"]
    style = meta["prompt_style"]
    return BuildSpec(model=ModelSpec(name=name, trust_remote_code=model.get("trust_remote_code", False),
                                     allow_pickle=model.get("allow_pickle", False),
                                     query_prefix=style["query_prefix"], passage_prefix=style["passage_prefix"],
                                     instruct_task=style.get("instruct_task")),
                     # artifacts from before long evaluation passages were judged without them
                     calibration=CalibrationSpec(**{"long_per_lang": 0, **meta["calibration_spec"]}))


def _reference_for_artifact(artifact_dir: Path, meta: dict, cache_dir: Path | None = None):
    """(evaluation samples, formatted texts, torch reference embeddings) the artifact was judged on."""
    from ..build import stages
    from ..build.cache import StageCache, hash_model_folder
    from ..families import load_model_tokenizer
    from ..models.cache import cache_root

    try:
        spec = _spec_for(meta)
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{artifact_dir}/embedc.json lacks the build facts parity needs ({exc})",
                            "re-run 'embedc build' for this artifact") from exc
    source = stages.resolve_source(spec)
    splits = stages.load_splits(spec)
    recorded = meta["calibration"]["evaluation"]["sha256"]
    if splits.summary()["evaluation"]["sha256"] != recorded:
        raise ArtifactError("the evaluation split no longer matches the one this artifact was judged on",
                            "rebuild the artifact, or restore the corpus it was built with")
    family, _, adapter = load_model_tokenizer(source, shared=True)
    from ..models import load_tokenizer

    tokenizer = load_tokenizer(dataclasses.replace(source, path=Path(artifact_dir)), shared=True)
    p = stages.Prepared(spec=spec, source=source, family=family, adapter=adapter, tokenizer=tokenizer,
                        splits=splits, style=stages.prompt_style(spec, source),
                        model_hash=hash_model_folder(source.path), out=Path(artifact_dir))
    if p.eval_max_length != meta["parity_max_length"]:
        spec = dataclasses.replace(spec, calibration=dataclasses.replace(
            spec.calibration, eval_max_length=meta["parity_max_length"]))
        p.spec = spec
    data = stages.data(p)
    cache = StageCache(Path(cache_dir) if cache_dir else cache_root() / "stages")
    import numpy as np

    reference = np.load(stages.reference(p, data, cache) / "embeddings.npy")
    return list(splits.evaluation), list(data.eval_texts), reference


def recheck_artifact(artifact_dir: Path, *, gate_table: dict | None = None, cache_dir: Path | None = None,
                     threads: int | None = None):
    """Recompute the artifact's parity on its recorded evaluation split.
    ``gate_table`` (``--gate``: "*"/family/precision -> gates) overrides the
    stored gates. Returns (meta, result, outcomes)."""
    from ..runtime import Encoder
    from .harness import embed_texts

    artifact_dir = Path(artifact_dir)
    meta = read_meta(artifact_dir)
    if meta.get("stage") != "artifact":
        raise ArtifactError(f"{artifact_dir} is a {meta.get('stage')} folder, not a built artifact",
                            "pass a <target>/<precision> folder made by 'embedc build'")
    verify_files(artifact_dir, meta)
    samples, texts, reference = _reference_for_artifact(artifact_dir, meta, cache_dir)
    enc = Encoder(artifact_dir, threads=threads, verify=False)
    cand = embed_texts(enc._runner.embed, enc.tokenizer, texts, input_names=enc.input_names,
                       max_length=meta["parity_max_length"])
    result = compute_parity(reference, cand, ids=[s.id for s in samples], langs=[s.lang for s in samples],
                            kinds=[s.kind for s in samples])
    stored = (meta.get("gates") or {}).get("resolved")
    base = gates_from_dict(stored) if stored else None   # None: an artifact from before gates were stored
    gates = resolve_gates(meta["precision"], [("--gate", gate_table or {})], base=base)
    return meta, result, evaluate_gates(result, gates)
