"""Goal 2 of issue 7: a training stage's real steps vs the bare backbone's forward/backward, in one run.

    .venv/bin/python benchmarks/train_throughput.py --stage drip          # full profile: eca_nfnet_l1, 160 px, batch 200, 50k classes
    .venv/bin/python benchmarks/train_throughput.py --stage gem --backbone tf_efficientnetv2_m --last-stride-1 0 --img 256 --classes 100000
    .venv/bin/python benchmarks/train_throughput.py --stage triplet       # the original: ViT-B/16 at 224, P×K 16×4
    .venv/bin/python benchmarks/train_throughput.py --stage drip --compile  # both sides torch.compiled
    .venv/bin/python benchmarks/train_throughput.py --stage drip --tiny   # CPU smoke run (seconds)

Bare: the stage's model (backbone → pooling → projection, random weights)
on a batch already on the device: forward, a trivial loss, backward, AdamW
step, under the runtime section's precision, channels-last and compile
settings. Stage: the real stage code - the stage's own training DataLoader
(drip: class images from the ``aug_size`` cache store, or with
``--drip-source files`` decoded from the JPEG files, then the query
augmentations; gem, triplet: the P×K sampler) and the Lightning Trainer of
the shared stage lifecycle (:func:`embedlab.stages.lifecycle._fit`: the
stage's callbacks and trainer options, the MLflow logger, compile) with the
stage's module (drip: ArcFace head, gradient clipping; gem: classifier + soft
triplet loss, per-step LR schedule; triplet: the phase's miner and triplet
loss) - timed over ``--steps`` training steps after ``--warmup`` steps, then
stopped. Goal: stage >= 0.85× bare.

Source images: ``--distinct`` 512×384 photos cycled over ``--classes``
classes (files in the page cache, as on a warm training machine); for the
GeM trainer square images at its training size, as the generated sets are.
``--data-only`` times the stage's DataLoader alone, on any machine.
``--devices N`` also times the stage's steps under DDP on N devices (one
process each, as ``runtime.devices: N`` runs it; on the CPU gloo ranks share
the cores: smoke figures only) and prints the global images/s and its ratio
to N × one device (goal on GPUs: >= 0.9).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment_throughput import cpu_model, photo_sources  # noqa: E402
from ratios import print_ratio_table, workers_arg  # noqa: E402

import pytorch_lightning as pl  # noqa: E402

from embedlab.config import PRECISIONS, TripletConfig, load_params  # noqa: E402
from embedlab.devices import launched_rank, lightning_precision, runtime_loader_options, torch_device  # noqa: E402
from embedlab.models.compiled import compiled_trunk  # noqa: E402
from embedlab.stages.lifecycle import _fit  # noqa: E402

GOAL = 0.85
SCALING_GOAL = 0.9  # N devices >= 0.9 × N × one device
PROJECT = Path(__file__).resolve().parents[1]


class _Done(Exception):
    """Raised by the timer once the timed steps are over: no epoch end, validation or checkpoint."""


class StepTimer(pl.Callback):
    """Images/s from the end of step ``warmup`` to the end of step ``warmup + steps``
    (every data fetch and training step in between, GPU work included)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.images, self.start, self.seconds = 0, 0.0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx < self.warmup:
            return
        _sync()
        if batch_idx == self.warmup:
            self.start = time.perf_counter()
            return
        self.images += 0 if batch is None else len(batch[-1])
        if batch_idx == self.warmup + self.steps:
            self.seconds = time.perf_counter() - self.start
            raise _Done

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bare_rate(model: torch.nn.Module, batch: int, img: int, precision: str, warmup: int, steps: int,
              compile: bool = False) -> float:
    """Images/s of forward + backward + AdamW of the model alone, batch already on the device."""
    dev = torch_device()
    model = model.train().to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype is torch.float16)
    x = torch.randn(batch, 3, img, img, device=dev)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x).float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    with compiled_trunk(model, compile):  # what the stages compile
        for _ in range(warmup):
            step()
        _sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync()
    return batch * steps / (time.perf_counter() - start)


def data_rate(loader, warmup: int, steps: int) -> float:
    """Images/s of the stage's training DataLoader alone (no model): the ceiling the data path sets."""
    images, start = 0, 0.0
    for i, batch in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        elif i > warmup:
            images += 0 if batch is None else len(batch[-1])
        if i == warmup + steps:
            return images / (time.perf_counter() - start)
    raise RuntimeError("the loader ran out of batches before the timed steps were done")


def _fit_timed(fit, timer: StepTimer) -> float:
    try:
        fit()
    except _Done:
        pass
    if not timer.seconds:
        raise RuntimeError("the stage ended before the timed steps were done (too few batches per epoch?)")
    return timer.rate


Rates = tuple[str, float | None, float, float | None]  # what ran; bare, data path alone, stage (img/s)


def _stage_rate(stage, module, params, timer: StepTimer, tmp: Path) -> float:
    """The stage's own training steps: the lifecycle's Trainer (callbacks, options, logger, compile)."""
    run_id = _mlflow_run(tmp)
    return _fit_timed(lambda: _fit(stage, module, params, run_id, None, [timer]), timer)


def drip_rates(params, args, sources: list[Path], tmp: Path) -> Rates:
    from embedlab.augment import OverlayPool, QueryAugmenter
    from embedlab.data.drip import ClassImages
    from embedlab.models.backbone import DescriptorModel, DescriptorSpec
    from embedlab.stages import drip

    # A random head: the W matrix of 50k classes is inference, timed by embed_throughput.py.
    cfg = dataclasses.replace(params.drip, epochs=1, limit_train_batches=args.warmup + args.steps + 2, w_init="random")
    # One image per class, one epoch: enough classes for every step of every rank (the timer stops the epoch early).
    n_classes = max(args.classes, cfg.batch_size * (args.warmup + args.steps + 2) * params.runtime.devices)
    if args.drip_source == "cache":  # what the stage reads: the sources decoded and resized once
        from embedlab.data.image_cache import cache_source
        from embedlab.images import list_images

        cache_source(sources[0].parent, tmp / "drip_cache", cfg.aug_size, workers=os.cpu_count() or 1)
        sources = list_images(tmp / "drip_cache")
    classes = [sources[i % len(sources)] for i in range(n_classes)]

    @dataclasses.dataclass
    class BenchStep(drip.DripRequest):
        """A drip step whose classes are the benchmark's photos (not the DISC folders)."""

        def setup(self, params) -> None:
            self.cfg = cfg
            self.classes = classes
            self.images = ClassImages(classes, cfg.aug_size, "fail")
            self.augment = QueryAugmenter(cfg.qry_augs_intensity, OverlayPool.from_paths(sources))

    stage = BenchStep(name="bench", step=drip.DripStep(n_classes), models_root=tmp / "drip")
    stage.setup(params)
    pl.seed_everything(0, workers=True)
    loader, _ = stage.loaders(params)  # the stage's training loader: (epoch, index) views of the classes
    what = (f"drip: {cfg.backbone} at {cfg.img_size} px (augmented at {cfg.aug_size} from the {args.drip_source}, "
            f"intensity {cfg.qry_augs_intensity}), batch {cfg.batch_size}, {len(classes):,} classes, {_speed(params)}")
    data = None if args.ddp_run else data_rate(loader, args.warmup, args.steps)
    if args.data_only:
        return what, None, data, None

    runtime = params.runtime
    spec = {"backbone": cfg.backbone, "embedding_dim": cfg.embedding_dim, "gem_p": cfg.gem_p, "img_size": cfg.img_size}
    torch.manual_seed(0)
    bare = None if args.ddp_run else bare_rate(DescriptorModel(DescriptorSpec(**spec)).use_channels_last(runtime.channels_last), cfg.batch_size,
                     cfg.img_size, lightning_precision(runtime.precision), args.warmup, args.steps, runtime.compile)
    module = stage.build(params, fresh=True)
    return what, bare, data, _stage_rate(stage, module, params, StepTimer(args.warmup, args.steps), tmp)


def gem_rates(params, args, sources: list[Path], tmp: Path) -> Rates:
    from embedlab.data.labelled import LabelledImages
    from embedlab.models.gem_module import GemModule
    from embedlab.models.gem_net import GemNet, GemNetSpec
    from embedlab.stages import gem

    iters = args.warmup + args.steps + 2  # the timer stops the epoch after the timed steps
    if not args.ddp_run:
        params.runtime = dataclasses.replace(params.runtime, devices=1)
    cfg = params.gem
    spec = gem._spec(cfg)
    batch = cfg.p * cfg.k
    per_class = max(cfg.k, 2)
    rows = [(sources[(c * per_class + i) % len(sources)], c) for c in range(args.classes) for i in range(per_class)]
    dataset = LabelledImages(rows, cfg.img_size)

    @dataclasses.dataclass
    class BenchRun(gem.GemRequest):
        """A GeM run on the benchmark's square photos (not a generated set's folder)."""

        def setup(self, params) -> None:
            self.cfg, self.dataset, self.iters = cfg, dataset, iters

    stage = BenchRun("bench", tmp / "set", cfg, models_root=tmp / "gem")
    stage.setup(params)
    what = (f"gem: {cfg.backbone} at {cfg.img_size} px, P×K {cfg.p}×{cfg.k} = batch {batch}, {args.classes:,} classes, "
            f"{_speed(params)}")
    data = None if args.ddp_run else data_rate(stage.loaders(params)[0], args.warmup, args.steps)
    if args.data_only:
        return what, None, data, None

    runtime = params.runtime
    torch.manual_seed(0)
    bare = None if args.ddp_run else bare_rate(GemNet(GemNetSpec(**spec)).use_channels_last(runtime.channels_last), batch, cfg.img_size,
                     lightning_precision(runtime.precision), args.warmup, args.steps, runtime.compile)
    pl.seed_everything(0, workers=True)
    module = GemModule(spec, args.classes, cfg.ce_weight, cfg.triplet_weight, cfg.label_smoothing, cfg.lr,
                       cfg.weight_decay, cfg.warmup_epochs, cfg.flat_epochs, cfg.epochs, iters,
                       runtime.classifier_devices, channels_last=runtime.channels_last)
    return what, bare, data, _stage_rate(stage, module, params, StepTimer(args.warmup, args.steps), tmp)


def triplet_rates(params, args, sources: list[Path], tmp: Path) -> Rates:
    from embedlab.data.faces import FaceImages, PairImages
    from embedlab.models.face_encoder import FaceEncoder, FaceEncoderSpec
    from embedlab.models.triplet_module import TripletModule
    from embedlab.stages import triplet

    cfg = params.triplet = dataclasses.replace(params.triplet, iters=args.warmup + args.steps + 2)
    phase = dataclasses.replace(params.triplet_phases[args.phase], epochs=1, init_from=None)
    spec = triplet._spec(cfg)
    batch = cfg.p * cfg.k
    rows = [(sources[(c * cfg.k + i) % len(sources)], c) for c in range(args.classes) for i in range(cfg.k)]
    train = FaceImages(rows, cfg.img_size)
    valid = PairImages([(sources[0], sources[1])], cfg.img_size)  # never reached: the timer stops the epoch

    @dataclasses.dataclass
    class BenchPhase(triplet.TripletRequest):
        """A phase on the benchmark's photos as labels (not `embedlab face-data`'s CSVs)."""

        def setup(self, params) -> None:
            self.valid_images = valid

        def loaders(self, params):
            return triplet.train_loader(train, cfg, params), None

    stage = BenchPhase(args.phase, phase, models_root=tmp / "triplet")
    stage.setup(params)
    what = (f"triplet ({args.phase}, {phase.miner} triplets): {cfg.backbone} at {cfg.img_size} px, "
            f"P×K {cfg.p}×{cfg.k} = batch {batch}, {args.classes:,} labels, {_speed(params)}")
    data = None if args.ddp_run else data_rate(stage.loaders(params)[0], args.warmup, args.steps)
    if args.data_only:
        return what, None, data, None

    runtime = params.runtime
    torch.manual_seed(0)
    bare = None if args.ddp_run else bare_rate(FaceEncoder(FaceEncoderSpec(**spec)), batch, cfg.img_size, lightning_precision(runtime.precision),
                     args.warmup, args.steps, runtime.compile)
    pl.seed_everything(0, workers=True)
    module = TripletModule(spec, phase.miner, cfg.margin, phase.lr, cfg.weight_decay, valid_pairs=[(0, 1, 0)])
    return what, bare, data, _stage_rate(stage, module, params, StepTimer(args.warmup, args.steps), tmp)


def _speed(params) -> str:
    runtime = params.runtime
    return (f"{lightning_precision(runtime.precision)}, channels_last={runtime.channels_last}, "
            f"compile={runtime.compile}, {_workers(params)} loader workers")


def _workers(params) -> int:
    return runtime_loader_options(params.runtime)["num_workers"]  # as the stage's loaders resolve them


def _prefetch_depth(params) -> int:
    """Batches the stage's loader holds ready before the first is asked for (workers × prefetch factor)."""
    options = runtime_loader_options(params.runtime)
    return options["num_workers"] * (options.get("prefetch_factor") or 2) if options["num_workers"] else 0


def _mlflow_run(tmp: Path) -> str:
    """A throw-away MLflow run for the stage's logger (the real logging path, into a temporary store)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    mlflow.set_experiment("train_throughput")
    return mlflow.start_run().info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("drip", "gem", "triplet"), default="drip")
    parser.add_argument("--backbone", help="default: drip - the full profile's; gem - params.yaml's; "
                                           "triplet - the original's (ViT-B/16)")
    parser.add_argument("--img", type=int)
    parser.add_argument("--aug-size", type=int, help="drip: the augmentation size (full profile: 384)")
    parser.add_argument("--intensity", type=float, help="drip: query augmentation intensity (full profile's first "
                                                         "step: 0.5; the last: 0.75)")
    parser.add_argument("--batch", type=int, help="drip: batch size; gem, triplet: P (images per class: K)")
    parser.add_argument("--phase", choices=("pretrain", "finetune"), default="pretrain",
                        help="triplet: which phase's miner (pretrain: all triplets, finetune: batch-hard)")
    parser.add_argument("--last-stride-1", type=int, choices=(0, 1),
                        help="gem: the ResNet last-stride trick (0 for non-ResNet backbones; default: params.yaml)")
    parser.add_argument("--classes", type=int, default=50000)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="runtime.precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (stage and bare)")
    parser.add_argument("--workers", type=workers_arg, default="auto",
                        help="runtime.num_workers: N or auto")
    parser.add_argument("--distinct", type=int, default=512, help="distinct source photos (cycled over the classes)")
    parser.add_argument("--drip-source", choices=("cache", "files"), default="cache",
                        help="drip: class images from the aug_size cache store, as the stage reads them "
                             "(data.drip_cache), or decoded from the 512×384 files")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data-only", action="store_true",
                        help="time the stage's DataLoader alone (no model; any machine): the ceiling it sets")
    parser.add_argument("--devices", type=int, default=1,
                        help="also time the stage's steps on N devices under DDP (one process each) and print the "
                             "global images/s and its ratio to N × one device")
    parser.add_argument("--ddp-run", type=Path, help=argparse.SUPPRESS)  # internal: the N-device run's rate file
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke size: test_resnet at 48 px, batch 16, 64 classes (triplet: the demo's ViT)")
    args = parser.parse_args(argv)

    params = load_params(PROJECT / "params.yaml")
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    drip_full = raw.get("profiles", {}).get("full", {}).get("drip", {})  # the drip goal is about the full profile
    # The speed settings are params.yaml's runtime section; the stage sections shape the model only.
    params.runtime = dataclasses.replace(params.runtime, num_workers=args.workers, precision=args.precision,
                                         compile=args.compile, devices=args.devices if args.ddp_run else 1)
    speed = {"pretrained": None}
    if args.stage == "drip":
        base = {k: drip_full.get(k, getattr(params.drip, k))
                for k in ("backbone", "img_size", "aug_size", "batch_size", "qry_augs_intensity")}
        over = {"backbone": args.backbone, "img_size": args.img, "aug_size": args.aug_size, "batch_size": args.batch,
                "qry_augs_intensity": args.intensity}
        if args.tiny:
            over = {"backbone": "test_resnet", "img_size": 48, "aug_size": 64, "batch_size": 16,
                    "qry_augs_intensity": args.intensity}
        chosen = {k: over[k] if over[k] is not None else base[k] for k in base}
        params.drip = dataclasses.replace(params.drip, **chosen, **speed)
    elif args.stage == "gem":
        over = {"backbone": args.backbone, "img_size": args.img, "p": args.batch}
        if args.tiny:
            over = {"backbone": "test_resnet", "img_size": 48, "p": 8}
        if args.last_stride_1 is not None:
            over["last_stride_1"] = bool(args.last_stride_1)
        params.gem = dataclasses.replace(params.gem, **{k: v for k, v in over.items() if v is not None}, **speed)
    else:
        # The original (TripletConfig's defaults: ViT-B/16 at 224, P×K 16×4), or the demo's ViT with --tiny.
        model = ("backbone", "img_size", "patch_size", "depth", "p", "k")
        base = params.triplet if args.tiny else TripletConfig()
        over = {k: v for k, v in {"backbone": args.backbone, "img_size": args.img, "p": args.batch}.items() if v}
        params.triplet = dataclasses.replace(params.triplet, **{**{k: getattr(base, k) for k in model}, **over},
                                             **speed)
    if args.tiny:
        args.classes, args.distinct, args.steps, args.warmup = 64, 32, 5, 2  # drip: 144 classes
    # The loader's workers fill their prefetch queue while the model and the Trainer are set up: time
    # only after the warm-up has drained it, or the window counts batches made before it opened.
    args.warmup = max(args.warmup, _prefetch_depth(params) + 1)

    with tempfile.TemporaryDirectory(prefix="train_bench_") as tmp:
        tmp = Path(tmp)
        # The GeM trainer reads generated sets, written at their training size; the others read photos.
        size = (params.gem.img_size,) * 2 if args.stage == "gem" else (512, 384)
        photo_sources(tmp / "sources", args.distinct, size=size)
        sources = sorted((tmp / "sources").glob("*.jpg"))
        try:
            rates = {"drip": drip_rates, "gem": gem_rates, "triplet": triplet_rates}[args.stage]
            what, bare, data, stage = rates(params, args, sources, tmp)
        finally:
            import mlflow

            mlflow.end_run()  # before its temporary store goes

    if args.ddp_run:  # every rank stepped in lockstep: the global rate is N × one rank's
        if launched_rank(args.devices) == 0:
            args.ddp_run.write_text(json.dumps({"rate": stage * args.devices}))
        return 0
    dev = torch_device()
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU {cpu_model()}"
    print(f"\n{what}; {args.steps} timed steps after {args.warmup}; {where}, {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}, Python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}\n")
    data_row = f"data path alone ({_workers(params)} workers, no model): the ceiling it sets"
    if args.data_only:
        print(f"| path | img/s |\n|---|---:|\n| {data_row} | {data:,.1f} |")
        return 0
    print_ratio_table([
        (f"bare forward + backward + AdamW (batch on {dev.type})", bare),
        (f"{args.stage} stage steps (its DataLoader from JPEG files, head and loss, Lightning, logging)", stage),
        (data_row, data),
    ], GOAL, dev.type == "cuda", "the data path and the model")
    if args.devices > 1:
        scaled = ddp_stage_rate(argv if argv is not None else sys.argv[1:], args.devices)
        print(f"\n{args.stage} stage steps on {args.devices} devices (DDP, batch {args.devices}× per step): "
              f"{scaled:,.1f} img/s, {scaled / (args.devices * stage):.2f}× {args.devices} × one device "
              f"(goal on GPUs: >= {SCALING_GOAL}; CPU gloo ranks share the cores: a smoke figure)")
    return 0


def ddp_stage_rate(argv: list[str], devices: int) -> float:
    """The stage's global images/s on ``devices`` DDP ranks: this script again, stage steps only, in a process
    of its own (Lightning's launcher starts the other ranks by re-running its command line)."""
    with tempfile.TemporaryDirectory(prefix="train_bench_ddp_") as tmp:
        out = Path(tmp) / "rate.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--ddp-run", str(out)], check=True)
        return json.loads(out.read_text())["rate"]


if __name__ == "__main__":
    sys.exit(main())
