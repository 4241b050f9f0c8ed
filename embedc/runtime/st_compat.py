"""sentence-transformers files for an artifact folder.

After ``write_st_files`` an ORT or OpenVINO artifact loads with
``SentenceTransformer(folder, backend=..., model_kwargs=...)`` and gives the
artifact's embeddings. What sentence-transformers 5.1 and 6.2 need (from their source;
6.2 still resolves the ``sentence_transformers.models.*`` class paths and reads the
same files):

- ``modules.json``: Transformer (root) -> Pooling (mean) -> Normalize;
- ``sentence_bert_config.json``: ``max_seq_length`` for its tokenizer call;
- ``config_sentence_transformers.json``: the prompts (``prompt_name="query"``);
- ``1_Pooling/config.json``; Normalize has no files (its ``load`` reads none);
- the model's Hugging Face ``config.json``: ``Transformer._load_config`` runs
  ``AutoConfig.from_pretrained`` on the folder before any backend loads.

The model file itself runs in optimum's ``ORTModelForFeatureExtraction`` or
optimum-intel's ``OVModelForFeatureExtraction``. Both take the token
embeddings by output *name* (``outputs["last_hidden_state"]``), not position;
sentence-transformers then pools and normalizes in torch. optimum-intel only
treats a folder as already converted if a file matches its
``OVBaseModel._search_pattern`` (``openvino..._...xml``); otherwise it tries
to export the (absent) PyTorch weights. Artifacts that miss either are
reported as not loadable, with the reason, and get no files.

Where the backends run: optimum-onnx 0.1.0 (the newest) caps transformers<4.58 and
does not import on transformers 5 (huggingface/optimum-onnx#114, #141); optimum-intel
2.2.0 caps transformers<5.6 and measured here fails to import on 5.24
(``VisionRotaryEmbedding`` left ``transformers.models.qwen2_vl``). So both backends
load under the legacy lock (constraints-legacy.txt: transformers 4.57.6,
sentence-transformers 5.1.2, optimum-onnx 0.1.0, optimum-intel 1.27.0), which CI tests.
The tokenizer files name ``PreTrainedTokenizerFast`` (embedc.models.save_tokenizer), so
sentence-transformers tokenizes with the artifact's saved pipeline on either stack.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..errors import ArtifactError
from ..fsutil import write_json_atomic

ST_BACKEND = {"ort": "onnx", "openvino": "openvino"}
TOKEN_OUTPUT = "last_hidden_state"          # the name optimum reads
OV_FILE_PATTERN = r"(.*)?openvino(.*)?\_(.*)?.xml$"  # optimum-intel 1.27 OVBaseModel._search_pattern
_LEGACY = "pip install -c constraints-legacy.txt -e '.[st-backends]' (transformers 4.57)"
REQUIRES = {
    "onnx": "sentence-transformers 5.1 with optimum-onnx 0.1.0, which needs transformers<4.58 "
            f"(huggingface/optimum-onnx#114): {_LEGACY}",
    "openvino": "sentence-transformers 5.1 with optimum-intel 1.27.0 (2.2 does not import on transformers 5.24): "
                + _LEGACY,
}
PROMPT_KINDS = ("query", "passage")
_MARK = "\x00text\x00"  # a stand-in text: samples may not be empty


def st_load_call(artifact_dir: Path, meta: dict) -> tuple[dict | None, str | None]:
    """``({"backend", "model_kwargs"}, None)`` if sentence-transformers can run
    this artifact's model file, else ``(None, reason)``."""
    backend = meta.get("backend") or "ort"  # the reference export has no backend; it runs in ORT
    runtime = meta.get("runtime") or {}
    if backend not in ST_BACKEND:
        return None, (f"sentence-transformers has no backend for {backend} artifacts "
                      "(it runs torch, onnx and openvino)")
    if runtime.get("static_shapes"):
        return None, ("static-shape bucket IRs (one per batch x length) need embedc's bucketing; "
                      "sentence-transformers feeds dynamic shapes")
    model_file = meta["model_file"]
    path = Path(artifact_dir) / model_file
    if not path.is_file():
        raise ArtifactError(f"model file {path} is missing", "rebuild the artifact")
    if backend == "ort":
        outputs = _onnx_outputs(path)
        kwargs = {"file_name": model_file, "provider": (runtime.get("providers") or ["CPUExecutionProvider"])[0]}
    else:
        if not re.search(OV_FILE_PATTERN, model_file):
            return None, (f"optimum-intel ignores the IR {model_file!r} (it looks for names matching "
                          f"{OV_FILE_PATTERN}, e.g. openvino_model.xml) and would try to export PyTorch weights; "
                          "the OpenVINO backend must save its IR as openvino_model.xml/.bin")
        outputs = _openvino_outputs(path, Path(artifact_dir) / runtime.get("weights", Path(model_file).stem + ".bin"))
        kwargs = {"file_name": model_file, "device": runtime.get("device", "CPU"),
                  "ov_config": dict(runtime.get("config") or {})}
    if TOKEN_OUTPUT not in outputs:
        return None, (f"{model_file} has no {TOKEN_OUTPUT!r} output (outputs: {', '.join(sorted(outputs))}); "
                      f"optimum reads the token embeddings by that name, so the exporter must name its "
                      f"second output {TOKEN_OUTPUT!r}")
    return {"backend": ST_BACKEND[backend], "model_kwargs": kwargs}, None


def write_st_files(artifact_dir: Path, meta: dict, model_source_dir: Path | None) -> dict:
    """Add the sentence-transformers files to an artifact folder (small JSON
    files and the model's ``config.json``; the model file is left as it is).

    Returns what was done, for embedc.json: ``loadable``, ``load`` (the exact
    ``SentenceTransformer`` backend and model_kwargs), ``prompts``,
    ``max_seq_length``, ``files``, ``requires``; or ``loadable: False`` and
    ``reason``, with no files written."""
    artifact_dir = Path(artifact_dir)
    load, reason = st_load_call(artifact_dir, meta)
    config = _hf_config(model_source_dir, meta)
    if load is not None and config is None:
        load, reason = None, ("no Hugging Face config.json in the model source folder "
                              "(sentence-transformers reads it before loading any backend)")
    if load is None:
        return {"loadable": False, "reason": reason, "files": []}

    # the model's own maximum, as embedc.load and the torch model use it
    max_seq_length = int(meta["max_length"])
    prompts = _prompts(meta)
    dim = int(meta["outputs"][0]["shape"][-1])
    shutil.copyfile(config, artifact_dir / "config.json")
    write_json_atomic(artifact_dir / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    write_json_atomic(artifact_dir / "sentence_bert_config.json",
                      {"max_seq_length": max_seq_length, "do_lower_case": False})
    write_json_atomic(artifact_dir / "config_sentence_transformers.json",
                      {"model_type": "SentenceTransformer", "prompts": prompts, "default_prompt_name": None,
                       "similarity_fn_name": "cosine"})
    (artifact_dir / "1_Pooling").mkdir(exist_ok=True)
    # the graph's own pooling: masked mean over every token, prompt included
    write_json_atomic(artifact_dir / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True})
    files = ["config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
             "1_Pooling/config.json"]
    return {"loadable": True, "load": load, "prompts": prompts, "max_seq_length": max_seq_length,
            "files": files, "requires": REQUIRES[load["backend"]],
            "usage": f"SentenceTransformer(folder, backend={load['backend']!r}, "
                     f"model_kwargs={load['model_kwargs']!r}).encode(texts, prompt_name='query')"}


def _prompts(meta: dict) -> dict[str, str]:
    """The artifact's prompt for each kind, as the prefix embedc.load puts before a text."""
    from ..calibration import PromptStyle
    from ..calibration.corpus import make_sample

    style = meta.get("prompt_style") or {"query_prefix": meta["prefixes"]["query"],
                                         "passage_prefix": meta["prefixes"]["passage"], "instruct_task": None}
    style = PromptStyle(**style)
    out = {}
    for kind in PROMPT_KINDS:
        formatted = style.apply(make_sample("und", kind, _MARK))
        if not formatted.endswith(_MARK):  # ST prompts are prefixes; embedc's formats are too
            raise ArtifactError(f"the {kind} format of this artifact is not a prefix",
                                "report this: sentence-transformers prompts can only prepend text")
        out[kind] = formatted[:-len(_MARK)]
    return out


def _hf_config(model_source_dir: Path | None, meta: dict) -> Path | None:
    for folder in (model_source_dir, (meta.get("model") or {}).get("path")):
        if folder and (Path(folder) / "config.json").is_file():
            return Path(folder) / "config.json"
    return None


def _onnx_outputs(path: Path) -> set[str]:
    import onnx

    return {o.name for o in onnx.load(str(path), load_external_data=False).graph.output}


def _openvino_outputs(xml: Path, weights: Path) -> set[str]:
    import openvino as ov

    return {name for out in ov.Core().read_model(str(xml), str(weights)).outputs for name in out.get_names()}
