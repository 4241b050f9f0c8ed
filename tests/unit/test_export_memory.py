"""onnxscript's rewrite rules keep the last graph they matched, and with it the exported torch
weights; embedc.exporter.leaks drops those references so the model's memory is freed after
the export (a 0.6B decoder's 2.4 GB otherwise stayed through the export's ONNX Runtime check)."""
from __future__ import annotations

import gc
import weakref

import torch

from embedc.exporter.leaks import release_rewriter_graphs


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 16)
        self.b = torch.nn.Linear(16, 4)

    def forward(self, x):
        return torch.nn.functional.normalize(self.b(torch.relu(self.a(x))), dim=-1)


def test_exported_weights_are_freed_once_the_rewriter_lets_go(tmp_path):
    net = _Net().eval()
    weight = weakref.ref(net.a.weight)
    program = torch.onnx.export(net, (torch.randn(2, 16),), dynamo=True, verbose=False)
    program.save(str(tmp_path / "m.onnx"))
    del program, net
    gc.collect()
    leaked = weight() is not None
    assert release_rewriter_graphs() >= (1 if leaked else 0)
    gc.collect()
    assert weight() is None   # freed; before the reset onnxscript's rule sets held it (leaked=True here)
