"""NNCF int4 on the two graphs OpenVINO makes of one ONNX export: ``convert_model`` (MatMul
weights ``[out, in]``, ``transpose_b = True``) and ``Core.read_model`` (the exported ``[in, out]``
layout). Prints each recipe's mean output cosine against the FP32 IR on a few multilingual
probe texts, per reader (openvinotoolkit/nncf#3494: the data-aware methods assume the first layout).

    PYTHONPATH=. .venv/bin/python benchmarks/openvino_weight_layout.py path/to/export/model.onnx

The export folder must hold the model's ``tokenizer.json`` (an embedc export does).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TEXTS = ["query: how do I bake bread at home?", "passage: Ìlú Èkó jẹ́ ìlú tó tóbi jù ní Nàìjíríà.",
         "Der schnelle braune Fuchs springt über den faulen Hund.", "東京は日本の首都です。",
         "La tour Eiffel est à Paris, en France."] * 4
RECIPES = {  # name -> (ratio, dataset, scale_estimation, awq)
    "data-free, ratio 1.0": (1.0, False, False, False),
    "ratio 0.5, data-aware": (0.5, True, False, False),
    "ratio 0.5 + scale estimation": (0.5, True, True, False),
    "ratio 1.0 + scale estimation": (1.0, True, True, False),
    "ratio 1.0 + AWQ": (1.0, True, False, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", type=Path)
    a = ap.parse_args()

    from embedc.models import load_tokenizer
    from embedc.parity.harness import encode_batch
    from embedc.targets.openvino.backend import _import_nncf, _import_openvino
    from embedc.targets.openvino.convert import untransposed_weights
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    ov, nncf = _import_openvino(), _import_nncf()
    core = ov.Core()
    tokenizer = load_tokenizer(a.onnx.parent)
    names = [p.get_any_name() for p in core.read_model(str(a.onnx)).inputs]
    feeds = encode_batch(tokenizer, TEXTS, input_names=names, max_length=128)

    def run(model):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled(feeds)[compiled.outputs[0]]

    readers = {"convert_model": lambda: ov.convert_model(str(a.onnx)),
               "read_model": lambda: core.read_model(str(a.onnx))}
    reference = run(readers["convert_model"]())
    print("| recipe | " + " | ".join(f"`{r}`" for r in readers) + " |")
    print("|---|" + "---|" * len(readers))
    for recipe, (ratio, data_aware, se, awq) in RECIPES.items():
        row = []
        for load in readers.values():
            model = load()
            kwargs = dict(mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=32, ratio=ratio,
                          advanced_parameters=AdvancedCompressionParameters(
                              group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
            if data_aware:
                kwargs.update(dataset=nncf.Dataset([feeds] * 4), subset_size=4, scale_estimation=se, awq=awq)
            got = run(nncf.compress_weights(model, **kwargs))
            cos = np.sum(got * reference, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
            row.append(f"{cos.mean():.5f}")
        print(f"| {recipe} | " + " | ".join(row) + " |")
    print(f"\nMatMuls with an untransposed constant weight: convert_model "
          f"{len(untransposed_weights(readers['convert_model']()))}, "
          f"read_model {len(untransposed_weights(readers['read_model']()))}")


if __name__ == "__main__":
    main()
