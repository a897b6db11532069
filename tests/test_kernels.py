"""Linear layers packed for oneDNN on a CPU (model/kernels.py): the same products as torch's own
layers, in the precision the call asks for, decided by the placement alone and recorded."""

from __future__ import annotations

import pytest
import torch

from batchnlp.model import kernels
from batchnlp.model.device import Placement
from batchnlp.spec import load_spec
from helpers import read_output, record, run, write_job

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")

CPU_FP32 = Placement(torch.device("cpu"), torch.float32, None)
CPU_BF16 = Placement(torch.device("cpu"), torch.float32, torch.bfloat16)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.GELU(), torch.nn.Linear(96, 8, bias=False))


def test_a_packed_float32_layer_computes_the_layers_product():
    model, x = _model(), torch.randn(5, 3, 48)
    expected = model(x)
    assert kernels.pack_linears(model, CPU_FP32) == 2
    assert all(isinstance(m, kernels.PackedLinear) for m in (model[0], model[2]))
    got = model(x)
    # The same float32 product, summed in oneDNN's order: equal to float32's last bits, not more.
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    # A float32 pack is the weight itself: read back, it is the layer's weight, bit for bit.
    assert torch.equal(model[2].weight, _model()[2].weight)


def test_a_bfloat16_pack_runs_as_autocast_and_in_float32_when_the_call_is_float32():
    """Under autocast the packed layer gives autocast's own bfloat16 product; a call with autocast
    off (a scoring head kept in float32, the probe's float32 reference) gets the float32 product,
    bit for bit, not a bfloat16 one (which would collapse a head's scores to a few values)."""
    model, x = _model(), torch.randn(7, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(x)
    exact = model(x)
    kernels.pack_linears(model, CPU_BF16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x)
    assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), autocast.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(model(x), exact)


def test_packing_follows_the_placement_and_the_switch(monkeypatch):
    assert kernels.decision(CPU_FP32)[0] == "onednn-packed"
    assert kernels.decision(Placement(torch.device("cpu"), torch.float32, None, quantize_int8=True))[0] == "int8-dynamic"
    assert kernels.decision(Placement(torch.device("cuda"), torch.float16, None))[0] == "aten"
    monkeypatch.setenv(kernels.SWITCH, "aten")
    assert kernels.decision(CPU_FP32) == ("aten", "BATCHNLP_LINEAR=aten")
    model = _model()
    assert kernels.pack_linears(model, CPU_FP32) == 0 and type(model[0]) is torch.nn.Linear


def test_a_refused_bfloat16_probe_repacks_for_float32():
    """bfloat16 packs are repacked in place for float32 when the probe refuses bfloat16, so the
    float32 run is packed too (and a head's float32 wrapper on the instance survives)."""
    from batchnlp.session import settled

    class Stages:
        def __init__(self, model, placement):
            self.model, self.placement = model, placement

        def in_float32(self):
            return Stages(self.model, self.placement.float32())

    model = _model()
    kernels.pack_linears(model, CPU_BF16)
    first = model[0]
    stages = Stages(model, Placement(torch.device("cpu"), torch.float32, torch.bfloat16, needs_probe=True))
    settled_stages, _ = settled(stages, lambda s: {"kept": False})
    assert settled_stages.placement.autocast_dtype is None
    assert model[0] is first and model[0].dtype == model[2].dtype == torch.float32


def test_a_generation_job_writes_the_same_texts_packed_or_not(tmp_path, causal_dir, reviews_csv, monkeypatch):
    """The whole model packed: greedy texts as torch's own layers give them, and the run's record
    says which kernel ran and why."""
    outputs = {}
    for kernel in ("onednn-packed", "aten"):
        monkeypatch.setenv(kernels.SWITCH, "aten" if kernel == "aten" else "")
        out = tmp_path / kernel
        job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                        task={"name": "text-generation", "max_new_tokens": 6}, model={"path": str(causal_dir)},
                        output={"path": str(out)}, name=f"{kernel}.yaml")
        run(load_spec(job), quiet=True)
        assert record(str(out))["runs"][-1]["linear_kernel"] == kernel
        outputs[kernel] = read_output(out).sort_by("id").column("generated_text").to_pylist()
    assert outputs["onednn-packed"] == outputs["aten"] and len(set(outputs["aten"])) > 1
