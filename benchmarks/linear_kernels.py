"""torch's own linear layer against oneDNN with the weight packed once (batchnlp/model/kernels.py),
on SmolLM2-135M's linear weights (30 layers of 576 -> 6,144 outputs: q, k, v, o, gate, up, down
together; random values), at the rows a decode step or a prompt batch gives them. Each pass reads
every weight once, as a decode step does, so the small-row figures are memory-bound and the large
ones compute-bound. Alternating, medians of --repeats; the largest difference from torch's own
output is shown (float32: the sums' order only).

    python benchmarks/linear_kernels.py [--repeats 5] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()

    import torch

    from batchnlp.model.precision import hardware

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    weights = [torch.randn(6144, 576).to(dtype) for _ in range(30)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
    print(f"{hardware()['cpu']}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}; "
          f"ms per pass over {sum(w.numel() for w in weights) / 1e6:.0f} M weights")
    print(f"{'rows':>6}{'torch':>10}{'oneDNN packed':>16}{'speed-up':>10}{'max diff':>12}")
    for rows in (1, 2, 4, 8, 16, 32, 64, 256):
        x = torch.randn(rows, 576).to(dtype)
        sides = {"aten": lambda: [torch.nn.functional.linear(x, w) for w in weights],
                 "onednn": lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "") for p in packed]}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, call in sides.items():
                began = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - began)
        aten, onednn = (1e3 * statistics.median(t[1:]) for t in times.values())
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(sides["aten"](), sides["onednn"]()))
        print(f"{rows:>6}{aten:>10.1f}{onednn:>16.1f}{aten / onednn:>9.2f}x{diff:>12.2g}")


if __name__ == "__main__":
    main()
