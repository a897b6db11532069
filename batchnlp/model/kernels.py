"""A CPU model's linear layers through oneDNN, their weights packed once into its blocked layout.

Why: on a CPU, torch runs a float32 `nn.Linear` through the BLAS it was built with (MKL), which
repacks the weight on every call and, on an AMD CPU, takes a path without AVX-512; oneDNN, which
torch ships too (what its compiler uses for CPU inference with frozen weights), computes the same
float32 product from a weight packed once. On the 2-core AMD EPYC of this project's machines, per
pass over SmolLM2-135M's 106 M linear weights: 18-23 ms against 49-96 ms at 1-8 rows, 87 against
152 ms at 64 (benchmarks/linear_kernels.py); 64 greedy SST-2 answers took 11.0 s against 16.2 s,
every text identical. Under bfloat16 autocast the packed weight is bfloat16 and the layer computes
what autocast's linear computes (bfloat16 inputs, float32 accumulation, a bfloat16 result):
all-MiniLM-L6-v2 on 2,000 AG News rows 1.23x faster, cosine 1.0 to the unpacked.

Only the sums' order changes (oneDNN's blocking, not MKL's): outputs differ from the unpacked
layer's at float32's last bits (~4e-6 relative), as they do between two batch shapes.

The decision depends on the placement and the installed torch only, never on a timing, and is
recorded with the run's placement (`linear_kernel`). `BATCHNLP_LINEAR=aten` turns it off (the
unpacked layers, as before), for a comparison or a CPU where oneDNN misbehaves.
"""

from __future__ import annotations

import os
from typing import Any

import torch

#: The environment variable that turns packing off ("aten": torch's own linear).
SWITCH = "BATCHNLP_LINEAR"


def decision(placement: Any) -> tuple[str, str]:
    """(kernel, why) for a placement: "onednn-packed", "int8-dynamic" (torch's dynamically
    quantised layers) or "aten" (torch's own linear)."""
    if placement.quantize_int8:
        return "int8-dynamic", f"int8: torch's dynamically quantised layers ({torch.backends.quantized.engine} engine)"
    if placement.device.type != "cpu":
        return "aten", f"{placement.device.type}: its own kernels"
    if os.environ.get(SWITCH, "").strip().lower() == "aten":
        return "aten", f"{SWITCH}=aten"
    if not torch.backends.mkldnn.is_available():
        return "aten", "this torch has no oneDNN"
    if placement.weights_dtype != torch.float32 or placement.autocast_dtype not in (None, torch.bfloat16):
        return "aten", f"{placement.name} weights"
    return "onednn-packed", f"a CPU, {placement.name}: oneDNN computes it from weights packed once"


def packed_dtype(placement: Any) -> torch.dtype:
    return placement.autocast_dtype or torch.float32


class PackedLinear(torch.nn.Module):
    """An nn.Linear whose weight oneDNN packed once (in `dtype`: float32, or bfloat16 for autocast).

    It runs packed when the call is in its dtype (bfloat16 autocast on, or float32 with autocast
    off); any other call (a scoring head run in float32 under autocast, the precision probe's
    float32 reference) runs torch's own linear on the float32 weight, exactly as before. A
    float32 pack needs no second copy: the float32 weight is then only read back from the pack
    if such a call ever comes."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._weight = linear.weight.detach()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.pack(dtype)

    def pack(self, dtype: torch.dtype) -> None:
        weight = self.weight
        self.dtype = dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), None)
        self.packed_bias = None if self.bias is None else self.bias.to(dtype)
        # A float32 pack holds the weight itself; under autocast the float32 weight stays for the
        # calls that run in float32 (the head, the probe's reference).
        self._weight = None if dtype == torch.float32 else weight

    @property
    def weight(self) -> torch.Tensor:
        return self._weight if self._weight is not None else self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled("cpu")
        if autocast and torch.get_autocast_dtype("cpu") == self.dtype:
            return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed, self.packed_bias, "none", [], "")
        if not autocast and self.dtype == x.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.packed_bias, "none", [], "")
        return torch.nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed={self.dtype}"


def pack_linears(model: Any, placement: Any) -> int:
    """Pack the model's linear layers for `placement` where `decision` says so (repacking layers
    packed before, in place, for another dtype); how many layers are packed."""
    if decision(placement)[0] != "onednn-packed":
        return 0
    dtype, count = packed_dtype(placement), 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, PackedLinear):
                if child.dtype != dtype:
                    child.pack(dtype)
            elif type(child) is torch.nn.Linear:
                setattr(module, name, PackedLinear(child, dtype))
            else:
                continue
            count += 1
    return count
