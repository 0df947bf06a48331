"""Partial FC vs the whole ArcFace head: one training step of the head alone, as the class count grows.

    .venv/bin/python benchmarks/partial_fc.py                      # 10k / 100k / 1M classes, rates 1, 0.3, 0.1
    .venv/bin/python benchmarks/partial_fc.py --sizes 1500000 --batch 512

The drip head (``ArcFaceHead.loss``: fp32 cosines, margin, CE) on a batch of
random unit embeddings, fed the way the demo feeds it (one image per class
in a batch), forward + backward, then the optimizer step drip uses (Adam
over the whole kernel). Rows: the head's forward + backward, and the whole
step with Adam. Each rate runs in its own process; peak RSS is above the
RSS after the head was made. On a GPU (``--device cuda``) the peak is
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import child_json  # noqa: E402
from table import print_head, sizes_parser  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import torch
from embedlab.models.arcface import ArcFaceHead

n, rate, batch, dim, steps, device = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
head = ArcFaceHead(dim, n, m=0.4, s=40.0, sample_rate=rate).to(device)
optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
embeddings = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=1).requires_grad_()

def sync():
    if device == "cuda":
        torch.cuda.synchronize()

def step(with_adam):
    labels = torch.randint(0, n, (batch,), device=device)
    optimizer.zero_grad(set_to_none=True)
    head.loss(embeddings, labels).backward()
    if with_adam:
        optimizer.step()

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
out = {}
for name, with_adam in (("head", False), ("step", True)):
    step(with_adam)  # warm-up (Adam's moments allocated here)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(with_adam)
    sync()
    out[name] = (time.perf_counter() - start) / steps * 1000
out["peak_mib"] = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
                   else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = sizes_parser(__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.3, 0.1])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print_head(f"Partial FC: the ArcFace head alone, batch {args.batch}, {args.dim}-d, {args.device}",
               ["classes", "rate", "head fwd+bwd ms", "vs rate 1", "step with Adam ms", "vs rate 1", "peak MiB"])
    for n in args.sizes:
        whole = None
        for rate in args.rates:
            r = child_json(CHILD, n, rate, args.batch, args.dim, args.steps, args.device)
            whole = whole or r
            print(f"| {n:,} | {rate:g} | {r['head']:.1f} | {r['head'] / whole['head']:.2f} | {r['step']:.1f} | "
                  f"{r['step'] / whole['step']:.2f} | {r['peak_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
