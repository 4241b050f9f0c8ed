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

import shutil
from pathlib import Path

from ..errors import ArtifactError
from ..fsutil import write_json_atomic

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
    this artifact's model file, else ``(None, reason)``. The backend says
    whether and how (its ``capabilities.st_backend`` and ``st_model_kwargs``)."""
    from ..targets.registry import get_backend

    backend = get_backend(meta.get("backend") or "ort")  # the reference export runs in ORT
    if backend.capabilities.st_backend is None:
        return None, f"sentence-transformers has no backend for {backend.name} artifacts"
    kwargs, reason = backend.st_model_kwargs(Path(artifact_dir), meta)
    if kwargs is None:
        return None, reason
    return {"backend": backend.capabilities.st_backend, "model_kwargs": kwargs}, None


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
    # the graph's own pooling (the model's: mean, CLS or last token), prompt included
    write_json_atomic(artifact_dir / "1_Pooling" / "config.json", _pooling(meta).st_config(dim))
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


def _pooling(meta: dict):
    from ..families import Pooling

    adapter = meta.get("adapter")
    return Pooling(**adapter["pooling"]) if adapter else Pooling("mean")
