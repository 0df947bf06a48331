"""Decoder training throughput: samples per second on the device it runs on.

    .venv/bin/python benchmarks/decoder_throughput.py                     # GPU: the original's setting
    .venv/bin/python benchmarks/decoder_throughput.py --batch 32 --steps 3 --width 0.25   # a quick CPU look

One training step is what the decoder stage does per batch: decode 512-d
templates to 112 px, MSE + Laplace + perceptual loss through a frozen
perceptor (photo and reconstruction, four intermediate nodes and the
embedding), backward, gradient clipping, Adam. The perceptor stands in for
the original's CosFace iresnet50: a timm ResNet-50 at 112 px with random
weights (about the same FLOPs per image; the weights do not change the
speed). Batches are in-memory tensors, so this is the model's ceiling; the
data path is measured beside it: the stage's own DataLoader reading JPEG
photos from disk, with ``--workers`` processes. Precisions run side by side
in one process: fp32, then bf16 autocast + channels_last (GPU). The
original trained at about 368 samples/s; the goal is 10× that on one modern GPU.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from embedlab.data.collate import collate_skipping_bad
from embedlab.data.templates import TemplatePairs, TemplateSet
from embedlab.models.backbone import DescriptorModel, DescriptorSpec
from embedlab.models.decoder import DecoderSpec, TemplateDecoder
from embedlab.models.decoder_losses import laplace_loss, perceptual_loss
from embedlab.models.face_models import EncoderFaceModel

ORIGINAL = 368.0  # samples/s (docs/originals/decoder.md)
GOAL = 10 * ORIGINAL


def _step_rate(decoder, perceptor, device, batch: int, steps: int, bf16: bool, channels_last: bool) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    decoder.to(device, memory_format=fmt).train()
    perceptor.to(device, memory_format=fmt)
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    templates = torch.nn.functional.normalize(torch.randn(batch, decoder.spec.template_dim, device=device), dim=1)
    photos = (torch.rand(batch, 3, decoder.spec.output_size, decoder.spec.output_size, device=device) * 2 - 1
              ).contiguous(memory_format=fmt)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step():
        with autocast:
            out = decoder(templates)
            loss = (torch.nn.functional.mse_loss(out.float(), photos) + laplace_loss(out, photos)
                    + 11.0 * perceptual_loss(perceptor, out, photos))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 10.0)
        opt.step()

    for _ in range(2):  # warm-up: cuDNN autotuning, allocator
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def _data_rate(batch: int, workers: int, size: int, n: int) -> float:
    """The stage's loader over ``n`` 250×250 JPEG photos (the original's crops are 112 px from larger faces)."""
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(n):
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (250, 250, 3), dtype=np.uint8)).save(path, quality=95)
            paths.append(path.name)
        ts = TemplateSet(paths, [str(i) for i in range(n)], np.eye(n, 512, dtype=np.float32))
        loader = DataLoader(TemplatePairs(ts, tmp, size), batch_size=batch, num_workers=workers, shuffle=True,
                            collate_fn=collate_skipping_bad, pin_memory=torch.cuda.is_available(),
                            persistent_workers=workers > 0, drop_last=True)
        for _ in loader:  # warm-up epoch (workers start, page cache)
            pass
        start, seen = time.perf_counter(), 0
        for _ in range(2):
            for templates, _photos in loader:
                seen += len(templates)
        return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=200, help="the original's batch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=float, default=1.0, help="decoder channel multiplier (1: the original)")
    ap.add_argument("--variant", default="base", choices=("base", "large"))
    ap.add_argument("--workers", type=int, default=8, help="DataLoader processes of the data-path run")
    ap.add_argument("--photos", type=int, default=2000, help="JPEG files of the data-path run")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    decoder = TemplateDecoder(DecoderSpec(template_dim=512, output_size=112, variant=args.variant, width=args.width))
    perceptor = EncoderFaceModel(DescriptorModel(DescriptorSpec("resnet50", embedding_dim=512, img_size=112)),
                                 "resnet50 stand-in", n_layers=4)
    for p in perceptor.parameters():
        p.requires_grad_(False)

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'}, " \
        f"{torch.get_num_threads()} threads)"
    print(f"device: {where}; torch {torch.__version__}; batch {args.batch}; decoder {args.variant} "
          f"width {args.width}; perceptor resnet50 @112 (4 nodes + embedding)\n")
    print("| run | samples/s | × original (368/s) | × goal (3,680/s) |\n|---|---|---|---|")
    runs = [("fp32", False, False)]
    if device.type == "cuda":
        runs.append(("bf16 autocast + channels_last", True, True))
    for name, bf16, cl in runs:
        rate = _step_rate(decoder, perceptor, device, args.batch, args.steps, bf16, cl)
        print(f"| training step, {name} | {rate:,.0f} | {rate / ORIGINAL:.2f} | {rate / GOAL:.2f} |")
    rate = _data_rate(args.batch, args.workers, 112, args.photos)
    print(f"| data path: JPEG -> batch, {args.workers} workers | {rate:,.0f} | {rate / ORIGINAL:.2f} | "
          f"{rate / GOAL:.2f} |")


if __name__ == "__main__":
    main()
