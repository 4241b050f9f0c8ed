"""Weights one tensor at a time, for models too large to hold twice.

A model built with its parameters on the ``meta`` device costs no memory;
:func:`materialize` then fills it from a :class:`WeightSource` tensor by
tensor, and the low-memory export (``embedc.exporter.streamed``) writes the
same tensors straight to the ONNX external-data file without ever building
the torch model. Two sources:

- :class:`SafetensorsWeights`: a hub-layout folder's ``*.safetensors``
  (one file or sharded), read through ``safe_open`` (memory-mapped), cast to
  FP32 per tensor, so a 16-bit checkpoint never exists in FP32 all at once;
- :class:`SeededWeights`: a random preset's weights, each tensor drawn from
  its own generator seeded by (preset seed, tensor name), so any tensor can
  be drawn alone and every path (export, torch reference) sees the same values.
"""
from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelSourceError


class WeightSource(ABC):
    """FP32 tensors by the body's own parameter names (``layers.0.mlp.up_proj.weight``)."""

    @abstractmethod
    def tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name`` in FP32, read or drawn now."""

    @abstractmethod
    def describe(self) -> str:
        """Where the tensors come from, for the export record."""


class SeededWeights(WeightSource):
    """transformers' initialization for decoder bodies, drawn per tensor:
    normal(0, ``std``) for matrices and tables, ones for norm weights, zeros
    for biases."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], seed: int, std: float):
        self.shapes, self.seed, self.std = dict(shapes), int(seed), float(std)

    def tensor(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if len(shape) >= 2:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 63))
            return torch.empty(shape, dtype=torch.float32).normal_(0.0, self.std, generator=g)
        if name.endswith("norm.weight"):
            return torch.ones(shape, dtype=torch.float32)
        return torch.zeros(shape, dtype=torch.float32)

    def describe(self) -> str:
        return f"random: normal(0, {self.std}) per tensor, seed {self.seed}"


class SafetensorsWeights(WeightSource):
    """Tensors of a folder's safetensors files, mapped to the body's names:
    a checkpoint saved from the causal-LM class prefixes them with ``model.``
    and carries an ``lm_head`` the body does not use."""

    def __init__(self, folder: Path, names: list[str]):
        from safetensors import safe_open

        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted({folder / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
        else:
            files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ModelSourceError(f"{folder} has no *.safetensors weights",
                                   "the low-memory path reads safetensors only; convert the checkpoint")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        where: dict[str, tuple[int, str]] = {}
        for i, handle in enumerate(self._handles):
            for key in handle.keys():
                where[key] = (i, key)
                if key.startswith("model."):
                    where.setdefault(key[len("model."):], (i, key))
        missing = [n for n in names if n not in where]
        if missing:
            raise ModelSourceError(f"{folder} lacks {len(missing)} weight(s) of the model (e.g. {missing[0]})",
                                   "the checkpoint does not match its config.json")
        self._where = {n: where[n] for n in names}
        self.folder = folder

    def tensor(self, name: str) -> torch.Tensor:
        i, key = self._where[name]
        return self._handles[i].get_tensor(key).to(torch.float32)

    def describe(self) -> str:
        return f"safetensors in {self.folder}, cast to FP32 one tensor at a time"


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no
    memory, no initialization work) and their buffers (rotary frequencies)
    for real: accelerate's ``init_empty_weights(include_buffers=False)``."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def fp32_bytes(model: nn.Module) -> int:
    return 4 * sum(p.numel() for p in model.parameters())


def materialize(model: nn.Module, weights: WeightSource) -> nn.Module:
    """Give every meta parameter its FP32 tensor from ``weights``, one at a
    time (peak: the model plus one tensor)."""
    for name, _ in list(model.named_parameters()):
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        module._parameters[attr] = nn.Parameter(weights.tensor(name), requires_grad=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelSourceError(f"{len(left)} tensor(s) of the model have no weights (e.g. {left[0]})",
                               "the checkpoint does not match its config.json")
    return model.eval()
