"""INT4 weights computed once in torch (AutoRound, or neural-compressor's GPTQ)
on the calibration split, cached as a build stage, and written into each
backend's INT4 form: ORT ``MatMulNBits`` (:mod:`.ort`), OpenVINO compressed
int4 constants (:mod:`.openvino`), TensorRT blockwise ``DequantizeLinear``
(:mod:`.tensorrt`). Import-light: torch and the quantizers load inside functions.

Backends declare the shared options with :func:`options_schema` and get the
weights with :func:`weights_for` (through ``CompileContext.int4_weights``,
which the artifact job fills with the cached stage)."""
from __future__ import annotations

from collections.abc import Mapping

from ..targets import options as opt

TORCH_ALGORITHMS = ("autoround", "gptq-inc")
INSTALL_HINT = "pip install 'embedc[int4]'"
# AutoRound defaults for the encoders here (all-MiniLM-L6-v2 measured in benchmarks/int4_recipes.md)
DEFAULT_ITERS = 200
DEFAULT_NSAMPLES = 128
DEFAULT_SEQLEN = 64


def options_schema() -> dict[str, opt.Option]:
    """The options every backend's int4 takes for the torch-computed recipes."""
    return {"iters": opt.integer(DEFAULT_ITERS, lo=1), "nsamples": opt.integer(DEFAULT_NSAMPLES, lo=1),
            "seqlen": opt.integer(DEFAULT_SEQLEN, lo=8), "full_range": opt.flag(False)}


def is_torch_algorithm(options: Mapping) -> bool:
    return options.get("algorithm") in TORCH_ALGORITHMS


def kept_nodes(model, patterns) -> dict[str, str]:
    """Node name -> module path of the Linear MatMuls that the ``exclude`` patterns select (a
    pattern that selects none is an error): what the torch computation leaves out of 4 bits."""
    from ..onnxkit.graph import weight_matmuls
    from ..onnxkit.scopes import module_paths, select_strict

    if not patterns:
        return {}
    paths = module_paths(model)
    return {n: paths[n] for n in select_strict({m.name: paths[m.name] for m in weight_matmuls(model)}, patterns)}


def kept_paths(reference_onnx, patterns) -> list[str]:
    """:func:`kept_nodes`' module paths in the reference export (read without its weights)."""
    if not patterns:
        return []
    import onnx

    return sorted(set(kept_nodes(onnx.load(str(reference_onnx), load_external_data=False), patterns).values()))


def weights_for(ctx, options: Mapping) -> tuple[dict, dict]:
    """(layers, info) of the resolved int4 ``options`` through the compile context's
    cached stage; ``layers`` maps a module path to ``{"q": int8 [N, K], "scale": float32 [N, G]}``."""
    from ..errors import CompileError
    from .compute import Int4Settings, load_layers, require

    settings = Int4Settings.from_options(options, kept_paths(ctx.reference_onnx, options.get("exclude", ())))
    require(settings.algorithm)
    fetch = getattr(ctx, "int4_weights", None)
    if fetch is None:
        raise CompileError(f"the {settings.algorithm} int4 recipe needs the torch model, and this compile has none",
                           "build through 'embedc build' (or pass CompileContext.int4_weights)")
    folder, info = fetch(settings)
    return load_layers(folder / "layers.npz"), info
