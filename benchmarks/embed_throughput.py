"""Goal 1 of issue 7: `embedlab embed` end to end vs the bare model, side by side in one run.

    .venv/bin/python benchmarks/embed_throughput.py                                  # ViT-B/16 at 224, bf16, batch 256
    .venv/bin/python benchmarks/embed_throughput.py --model eca_nfnet_l1 --img 160   # the drip model (full profile)
    .venv/bin/python benchmarks/embed_throughput.py --tiny                           # CPU smoke run (seconds)
    .venv/bin/python benchmarks/embed_throughput.py --devices 8                      # + 8 GPUs, one process each

Bare: the descriptor model (random weights) on an in-memory batch already on
the device, forward only, under the same autocast / channels-last / compile
settings, timed after warm-up. End to end: the same weights exported to a
.safetensors file, then ``embed_folder`` (what ``embedlab embed`` runs, minus
the interpreter start-up) from ``--images`` JPEG files on disk (512×384
photos, in the page cache after writing) to the h5 file: model loading, the
DataLoader (or the GPU JPEG decoder), the model, writing. One warm-up call of
it first (CUDA/cuDNN set-up, compilation). Goal: end to end >= 0.8× bare.

``vit_*`` models are the face encoder (timm ViT, CLS token); any other timm
name is the drip descriptor model (backbone → GeM → projection).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment_throughput import cpu_model, photo_sources  # noqa: E402
from ratios import print_ratio_table, workers_arg  # noqa: E402

from embedlab.config import RuntimeConfig  # noqa: E402
from embedlab.devices import autocast_dtype, torch_device  # noqa: E402
from embedlab.models.checkpoints import export_descriptor_model  # noqa: E402
from embedlab.evaluation.embed import embed_folder  # noqa: E402

GOAL = 0.8


def build_model(name: str, img: int) -> torch.nn.Module:
    """The project's descriptor model for ``name`` at ``img`` px, random weights."""
    if name.startswith("vit_"):
        from embedlab.models.face_encoder import FaceEncoder, FaceEncoderSpec

        return FaceEncoder(FaceEncoderSpec(backbone=name, img_size=img))
    from embedlab.models.backbone import DescriptorModel, DescriptorSpec

    return DescriptorModel(DescriptorSpec(backbone=name, embedding_dim=256, img_size=img))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.no_grad()
def bare_rate(model, dev, batch: int, img: int, precision: str, channels_last: bool, compile: bool,
              warmup: int, steps: int) -> float:
    """Images/s of the model alone on a batch already on the device."""
    model = model.eval().to(dev).use_channels_last(channels_last)
    forward = torch.compile(model, dynamic=False) if compile else model
    x = torch.randn(batch, 3, img, img, device=dev)
    dtype = autocast_dtype(precision, dev)
    with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(warmup):
            forward(x)
        sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            forward(x)
        sync(dev)
    return batch * steps / (time.perf_counter() - start)


def replicate(sources: list[Path], folder: Path, n: int) -> None:
    """``n`` JPEG files in ``folder`` (hard links to the distinct sources, cycled)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = folder / f"Q{i:07d}.jpg"
        try:
            os.link(sources[i % len(sources)], target)
        except OSError:
            target.write_bytes(sources[i % len(sources)].read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=20480, help="JPEG files embedded end to end")
    parser.add_argument("--distinct", type=int, default=512, help="distinct photos among them (the rest: links)")
    parser.add_argument("--precision", default="bf16", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--channels-last", type=int, default=1, choices=(0, 1))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--decode", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--workers", type=workers_arg, default="auto", help="DataLoader workers or auto")
    parser.add_argument("--prefetch", type=int, default=None, help="prefetch_factor (torch's default: 2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30, help="timed batches of the bare model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--devices", type=int, default=1,
                        help="also embed with this many processes (`embed --devices N`: one per GPU) and print "
                             "the scaling against N × one process")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke size: test_resnet at 48 px, batch 32, 256 images, fp32")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.img, args.batch, args.images, args.distinct = "test_resnet", 48, 32, 256, 64
        args.precision, args.steps, args.warmup = "fp32", 8, 2
    dev = torch_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, args.img)

    with tempfile.TemporaryDirectory(prefix="embed_bench_") as tmp:
        tmp = Path(tmp)
        photo_sources(tmp / "sources", args.distinct, size=(512, 384))
        replicate(sorted((tmp / "sources").glob("*.jpg")), tmp / "images", args.images)
        checkpoint = export_descriptor_model(model, tmp / "model.safetensors")

        bare = bare_rate(model, dev, args.batch, args.img, args.precision, bool(args.channels_last),
                         args.compile, args.warmup, args.steps)
        model.cpu()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        # params.yaml's runtime section as `embedlab embed` passes it
        runtime = RuntimeConfig(device=args.device, precision=args.precision, channels_last=bool(args.channels_last),
                                compile=args.compile, num_workers=args.workers, prefetch_factor=args.prefetch,
                                decode=args.decode, inference_batch_size=args.batch)
        settings = dict(img_size=args.img, runtime=runtime, progress=False)
        # Warm-up: the CUDA context, cuDNN's algorithm choice, compilation (cached for the timed call).
        replicate(sorted((tmp / "sources").glob("*.jpg"))[: 2 * args.batch], tmp / "warmup",
                  min(2 * args.batch, args.images))
        embed_folder(checkpoint, tmp / "warmup", tmp / "warmup.h5", **settings)
        summary = embed_folder(checkpoint, tmp / "images", tmp / "out.h5", **settings)
        many = None
        if args.devices > 1:
            import dataclasses

            many = embed_folder(checkpoint, tmp / "images", tmp / "many.h5",
                                **{**settings, "runtime": dataclasses.replace(runtime, devices=args.devices)})

    e2e = summary["images"] / summary["seconds"]
    loop = summary["images"] / summary["embed_seconds"]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU {cpu_model()}"
    print(f"\nModel {args.model} at {args.img} px, batch {args.batch}, {summary['precision']}, "
          f"channels_last={bool(args.channels_last)}, compile={args.compile}, decode={summary['decode']}, "
          f"{summary['num_workers']} loader workers (of {os.cpu_count()} CPUs), {summary['images']} JPEG files "
          f"512×384; {where}; torch {torch.__version__}, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print_ratio_table([
        (f"bare model (in-memory batch on {dev.type})", bare),
        (f"`embedlab embed` end to end (load, decode, model, h5; {summary['seconds']:.2f} s)", e2e),
        ("its loader + model loop alone", loop),
    ], GOAL, dev.type == "cuda", "the model and the decoding")
    if many is not None:
        rate = many["images"] / many["seconds"]
        print(f"\n`embedlab embed --devices {args.devices}`: {rate:,.0f} images/s end to end, "
              f"{rate / (args.devices * e2e):.2f}× {args.devices} × one process (goal on GPUs: >= 0.9; "
              "on a CPU the processes share its cores: a smoke figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
