"""Device and precision, decided once per run (tasks never call .cuda() or .half()).

CUDA: weights cast to float16 by default (bfloat16 when asked and supported), which is both
faster and lighter than autocast. CPU: bfloat16 runs under autocast, which keeps numerically
delicate ops (softmax, layer norm) in float32; `auto` takes it only where the CPU computes
bfloat16 natively, multiplies in it decisively faster than in float32 (a per-machine
calibration, `precision.py`) and agrees with float32 on the job's first rows (the runner's
probe). A task's scoring head (`Task.float32_head`) runs in float32 under autocast: its logits
are the scores, and bfloat16's 8 bits of mantissa would tie them. int8 quantises the weights of
the linear layers dynamically. Measured on the 2-core AVX512-BF16 EPYC of our CI, one forward of a
DistilBERT-base shape over batches of 2k-4k tokens: bfloat16 1.7-2.3x float32, int8 2.2-2.9x.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from batchnlp.errors import SpecError
from batchnlp.spec import RuntimeSpec


@dataclass(frozen=True)
class Placement:
    device: torch.device
    weights_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    quantize_int8: bool = False
    #: Chosen by `dtype: auto`: kept only if the first rows agree with float32.
    needs_probe: bool = False
    #: `dtype: auto` on a CPU: the facts that decided it (hardware, calibration; for the record).
    decision: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def name(self) -> str:
        if self.quantize_int8:
            return "int8"
        return str(self.autocast_dtype or self.weights_dtype).removeprefix("torch.")

    def float32(self) -> "Placement":
        return Placement(self.device, torch.float32, None)

    def context(self) -> Any:
        ctx = contextlib.ExitStack()
        ctx.enter_context(torch.inference_mode())
        if self.autocast_dtype is not None:
            ctx.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
        return ctx

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtype": self.name,
                "weights_dtype": str(self.weights_dtype).removeprefix("torch."), "int8": self.quantize_int8,
                "autocast_dtype": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else None,
                "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
                "int8_engine": torch.backends.quantized.engine if self.quantize_int8 else None,
                "torch_threads": torch.get_num_threads(), **self.linear_kernel()}

    def linear_kernel(self) -> dict[str, str]:
        from batchnlp.model import kernels

        kernel, why = kernels.decision(self)
        return {"linear_kernel": kernel, "linear_kernel_why": why}


def choose(runtime: RuntimeSpec, pinned: str | None = None) -> Placement:
    """The placement for the job's runtime. `pinned`: the precision an output settled on at its
    first commit; `dtype: auto` then takes it as if the job had named it (no second probe)."""
    if pinned is not None and runtime.dtype == "auto":
        try:
            return choose(dataclasses.replace(runtime, dtype=pinned))
        except SpecError as e:
            raise SpecError("runtime.dtype", f"auto, and this output's precision was pinned to {pinned} by its "
                                             f"first run, which this device cannot run ({e}); run it where "
                                             f"{pinned} runs, or start another output") from None
    device = _device(runtime.device)
    if runtime.dtype == "int8":
        if device.type != "cpu":
            raise SpecError("runtime.dtype", "int8 (dynamic quantisation) runs on CPU only; use float16 or "
                                             "bfloat16 on CUDA")
        return Placement(device, torch.float32, None, quantize_int8=True)
    if device.type == "cuda":
        if runtime.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise SpecError("runtime.dtype", f"bfloat16 is not supported on {torch.cuda.get_device_name(device)}; "
                                             "use float16 or auto")
        dtype = {"auto": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float32": torch.float32}[runtime.dtype]
        return Placement(device, dtype, None)
    if runtime.dtype == "float16":
        raise SpecError("runtime.dtype", "float16 on a CPU is slow and poorly supported; use bfloat16 or float32")
    if runtime.dtype == "auto":
        from batchnlp.model import precision

        candidate, facts = precision.cpu_candidate()
        return Placement(device, torch.float32, torch.bfloat16 if candidate else None, needs_probe=candidate,
                         decision=facts)
    return Placement(device, torch.float32, torch.bfloat16 if runtime.dtype == "bfloat16" else None)


def use_int8_engine() -> str:
    """Quantise and run int8 with oneDNN's kernels where torch has them: its dynamic int8 linear
    ran 13-20% faster than the default `x86` engine's on the Xeon of our CI (DistilBERT-base
    shapes), which took the int8 sentiment bench from 0.98x to 1.19x ONNX Runtime's int8. The
    engine is process-wide and packs the weights, so it is set before quantising."""
    if "onednn" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "onednn"
    return torch.backends.quantized.engine


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpecError("runtime.device", f"{name} asked for, but torch {torch.__version__} sees no CUDA "
                                              "device; use device: auto or cpu")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpecError("runtime.device", f"{name} asked for, but only {torch.cuda.device_count()} "
                                              "CUDA device(s) exist")
        return device
    return torch.device("cpu")


def head_in_float32(head: Any) -> None:
    """Run `head` (a task's scoring head: its outputs are the scores) in float32 under bfloat16
    autocast. Its logits would otherwise come out in bfloat16, whose 8-bit mantissa steps by 0.125
    at 16-32: an LLM labeller's scores collapsed to 28 distinct values on 872 SST-2 rows, with 36
    exact 0.5 ties, where float32 gave a distinct score to every row. The head is a small share of
    the work (one projection, at the positions scored). Its forward is wrapped on the instance, as
    accelerate's hooks do, so the module tree and its weights (tied or not) stay as they are;
    without autocast it computes exactly as before."""
    if head is None or getattr(head, "_batchnlp_float32", False):
        return
    inner = head.forward

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(x.device.type, enabled=False):
            return inner(x.float(), *args, **kwargs)

    head.forward = forward
    head._batchnlp_float32 = True
