"""What the ONNX-based backends (ONNX Runtime, TensorRT) share, each concept
with one meaning:

- :mod:`.files`: loading and saving models, and the one external-data policy;
- :mod:`.scopes`: module paths from dynamo's name scopes, and the one
  layer-exclusion grammar (dotted module-path patterns on dot boundaries);
- :mod:`.graph`: graph queries (Linear MatMuls, embedding tables, ancestors)
  and small edits;
- :mod:`.norms`: the final-norm boundary (LayerNorm or dynamo's RMSNorm pattern);
- :mod:`.session`: ONNX Runtime CPU sessions at a named optimization level;
- :mod:`.calibration`: the calibration data reader;
- :mod:`.activations`: float activation capture over calibration feeds;
- :mod:`.search`: the sensitivity search (which layers stay out of a quantization);
- :mod:`.qdq`: the QDQ consumer fix (only quantized GEMMs read dequantized tensors);
- :mod:`.metrics`: embedding cosine statistics.

onnx and onnxruntime are imported inside the modules that need them; this
package is never imported by the CLI's fast paths.
"""
