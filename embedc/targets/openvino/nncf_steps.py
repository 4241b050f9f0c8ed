"""``nncf.quantize`` for OpenVINO models, run one pipeline step at a time.

NNCF's post-training pipeline is SmoothQuant, then the range statistics and
the FakeQuantize insertion (MinMax, fast bias correction). ``nncf.quantize``
runs the steps back to back, and on a large model the memory of the first
outlives it: the original mapped weights, SmoothQuant's scaled weights in the
heap, and the heap pages its statistics pass freed all stay resident while the
ranges are collected on a compiled copy of the scaled model (a 0.6B decoder:
10.2 GB peak RSS for 2.4 GB of FP32 weights).

``quantize_in_steps`` calls the same pipeline object (``create_ptq_pipeline``
with ``nncf.quantize``'s arguments) step by step, and between steps hands freed
heap back to the OS and, given a scratch folder, saves the step's model to an
IR and reads it back memory-mapped, so the next step starts from file pages
instead of heap copies. The quantized model is the one ``nncf.quantize`` gives
(tests compare the saved IRs byte for byte); only the memory differs.

NNCF 3.4's SmoothQuant also computes its scaled weights in float64 (its
``fns.quantile`` clip bound is float64 and promotes the scales: the cause
nncf#3044 fixed for AWQ) and holds all of them until the new float32 constants
are built: twice the model's FP32 size. ``_float32_smoothed_weights`` casts
each to float32 as it is computed, the cast NNCF does later anyway (embedc's
converted references are FP32, so the bytes are the same).

It uses NNCF's pipeline API below ``nncf.quantize`` (``nncf.quantization.
algorithms``), which is public in the source but not in the docs: the pinned
NNCF (constraints.txt) is what it is tested against.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np

from ...memory import release_memory


_patch_lock = threading.Lock()
_patch_users = 0


@contextlib.contextmanager
def _float32_smoothed_weights():
    """Patch NNCF's SmoothQuant weight update for the duration (counted, so that pairs compiling
    in parallel threads neither stack the patch nor remove it from under each other)."""
    global _patch_users
    from nncf.quantization.algorithms.smooth_quant.openvino_backend import OVSmoothQuantAlgoBackend

    with _patch_lock:
        if _patch_users == 0:
            original = OVSmoothQuantAlgoBackend.__dict__["weight_update_command"]

            def weight_update_command(node_with_weight, nncf_graph, weight_value):
                if isinstance(weight_value, np.ndarray) and weight_value.dtype == np.float64:
                    weight_value = weight_value.astype(np.float32)
                return original.__func__(node_with_weight, nncf_graph, weight_value)

            weight_update_command.original = original
            OVSmoothQuantAlgoBackend.weight_update_command = staticmethod(weight_update_command)
        _patch_users += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                patched = OVSmoothQuantAlgoBackend.__dict__["weight_update_command"].__func__
                OVSmoothQuantAlgoBackend.weight_update_command = patched.original


def quantize_in_steps(ov, nncf, model, dataset, *, scratch: Path | None = None, **quantize_kwargs):
    """``nncf.quantize(model, dataset, **quantize_kwargs)`` step by step.

    The caller must not hold ``model`` (pass it and drop its own reference) or
    its weights stay resident. ``scratch``: a folder for the mapped IR between
    steps (it must outlive the returned model's use); without one, only freed
    heap is returned between steps."""
    from nncf.common.factory import build_graph
    from nncf.openvino.graph.model_utils import remove_friendly_name_duplicates
    from nncf.openvino.graph.node_utils import get_number_if_op
    from nncf.openvino.quantization.backend_parameters import is_weight_compression_needed
    from nncf.openvino.rt_info import dump_parameters
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, convert_to_dict_recursively
    from nncf.quantization.algorithms.pipeline import collect_statistics
    from nncf.quantization.algorithms.post_training.pipeline import create_ptq_pipeline
    from openvino._offline_transformations import compress_quantize_weights_transformation

    if get_number_if_op(model) > 0:  # NNCF quantizes If bodies recursively: its own path
        return nncf.quantize(model, dataset, **quantize_kwargs)
    args = {"mode": None, "preset": None, "target_device": nncf.TargetDevice.ANY, "subset_size": 300,
            "fast_bias_correction": True, "model_type": None, "ignored_scope": None,
            "advanced_parameters": None, **quantize_kwargs}
    if args["subset_size"] < 1:
        raise ValueError("subset_size must be positive")
    advanced = args["advanced_parameters"]
    batch = dataset.get_batch_size()
    if batch is not None and batch > 1:  # what nncf.quantize does for batched datasets
        advanced = advanced or AdvancedQuantizationParameters()
        if advanced.batchwise_statistics is None:
            advanced.batchwise_statistics = True
        args["advanced_parameters"] = advanced

    pipeline = create_ptq_pipeline(**args)
    model = remove_friendly_name_duplicates(model)
    steps = len(pipeline.pipeline_steps)
    for index in range(steps):
        graph = build_graph(model)
        statistics = collect_statistics(pipeline.get_statistic_points_for_step(index, model, graph),
                                        model, graph, dataset)
        with _float32_smoothed_weights():
            model = pipeline.run_step(index, statistics, model, graph)
        del statistics, graph
        release_memory()
        if scratch is not None and index < steps - 1:
            xml = Path(scratch) / f"step{index}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, str(xml), compress_to_fp16=False)
            del model
            release_memory()
            model = ov.Core().read_model(str(xml), str(xml.with_suffix(".bin")))

    if is_weight_compression_needed(args["advanced_parameters"]):
        compress_quantize_weights_transformation(model)
    dump_parameters(model, {
        "preset": args["preset"], "target_device": args["target_device"].value, "subset_size": args["subset_size"],
        "fast_bias_correction": args["fast_bias_correction"], "model_type": args["model_type"],
        "ignored_scope": args["ignored_scope"],
        "advanced_parameters": convert_to_dict_recursively(args["advanced_parameters"])})
    return model
