"""Re-check an existing artifact against the torch reference: the command a
CI pipeline runs after a model or runtime change."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..artifact import read_meta, verify_files
from ..errors import ArtifactError
from .gates import evaluate_gates, resolve_gates
from .metrics import compute_parity


def _build_for(meta: dict, cache_dir: Path | None):
    from ..models.cache import cache_root
    from ..build.pipeline import _Build
    from ..spec import BuildSpec, CalibrationSpec, ModelSpec
    from ..build.cache import StageCache

    model = meta["model"]
    name = model["path"] if Path(model["path"]).is_dir() else model["name"]
    style = meta["prompt_style"]
    spec = BuildSpec(model=ModelSpec(name=name, trust_remote_code=model.get("trust_remote_code", False),
                                     allow_pickle=model.get("allow_pickle", False),
                                     query_prefix=style["query_prefix"], passage_prefix=style["passage_prefix"],
                                     instruct_task=style.get("instruct_task")),
                     calibration=CalibrationSpec(**meta["calibration_spec"]))
    return _Build(spec, StageCache(cache_dir or cache_root() / "stages"))


def _reference_for_artifact(artifact_dir: Path, meta: dict, cache_dir: Path | None = None):
    """(evaluation samples, formatted texts, torch reference embeddings) the artifact was judged on."""
    from ..models import load_tokenizer

    b = _build_for(meta, cache_dir)
    splits = b.splits()
    recorded = meta["calibration"]["evaluation"]["sha256"]
    if splits.summary()["evaluation"]["sha256"] != recorded:
        raise ArtifactError("the evaluation split no longer matches the one this artifact was judged on",
                            "rebuild the artifact, or restore the corpus it was built with")
    samples = list(splits.evaluation)
    texts = b.prompt_style().apply_all(samples)
    tokenizer = load_tokenizer(dataclasses.replace(b.source, path=Path(artifact_dir)))
    return samples, texts, b.reference(tokenizer, texts, recorded, meta["parity_max_length"])


def recheck_artifact(artifact_dir: Path, *, overrides=None, per_model=None, cache_dir: Path | None = None,
                     threads: int | None = None):
    """Recompute the artifact's parity on its recorded evaluation split. Returns (meta, result, outcomes)."""
    from ..runtime.encoder import Encoder
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
    gates = resolve_gates(meta["precision"], overrides, per_model)
    return meta, result, evaluate_gates(result, gates)
