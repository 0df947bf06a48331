"""The ``embedlab`` command: every DVC stage and MLflow entry point calls it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from embedlab.config import ConfigError, DripStep, apply_overrides, load_params, use_profile
from embedlab.postprocess.cli import add_parser as add_postprocess_parser
from embedlab.sweep.cli import add_parser as add_sweep_parser


def _params(args):
    return load_params(args.params)


def cmd_demo_data(args) -> None:
    from embedlab.data.demo import build_demo_data
    from embedlab.data.face_demo import build_demo_faces

    params = _params(args)
    cfg = apply_overrides(params.demo_data, {"seed": args.seed, "n_training": args.n_training,
                                             "n_reference": args.n_reference}, "demo-data")
    root = Path(args.out or params.data.raw)
    summary = build_demo_data(root, cfg)
    summary["faces"] = build_demo_faces(root / "faces" if args.out else Path(params.data.faces), params.demo_faces)
    print(json.dumps(summary, indent=2, default=str))


def cmd_augment(args) -> None:
    from embedlab.augment.generator import format_summary
    from embedlab.stages.augment import run_augment, show_recipe

    params = _params(args)
    overrides = {"classes": args.classes, "per_class": args.per_class, "size": args.size, "workers": args.workers,
                 "seed": args.seed}
    if args.show:
        print(show_recipe(params, args.recipe, overrides, args.params))
        return
    manifest, out = run_augment(params, args.recipe, overrides, out=args.out, restart=args.restart,
                                if_stale=args.if_stale, progress=not args.no_progress, params_file=args.params)
    print(format_summary(manifest, out))


def cmd_drip(args) -> None:
    from embedlab.stages.drip import DripRequest, plan_scheduled_step, run_drip

    params = _params(args)
    if args.step:
        request = plan_scheduled_step(params, args.step)
        overrides = {"batch_size": args.batch_size, "qry_augs_intensity": args.qry_augs_intensity, "epochs": args.epochs}
        request.step = apply_overrides(request.step, overrides, "drip")
    else:
        if args.n_facebook_samples is None:
            raise ConfigError("embedlab drip: give --step NAME or --n-facebook-samples N (see --help)")
        step = DripStep(args.n_facebook_samples, args.n_imagenet_samples or 0, args.n_frm_face_samples or 0,
                        args.batch_size, args.qry_augs_intensity, args.epochs)
        name = args.name or f"{step.n_facebook_samples + step.n_imagenet_samples + step.n_frm_face_samples}cls"
        request = DripRequest(name=name, step=step)
    if args.build_w_matrix is not None:  # "" (MLproject default) means: none
        request.build_w_matrix = Path(args.build_w_matrix) if args.build_w_matrix else None
    summary = run_drip(params, request)
    print(json.dumps(summary, indent=2))


def cmd_gem(args) -> None:
    from embedlab.stages.gem import plan_gem, run_gem

    params = _params(args)
    request = plan_gem(params, args.recipe, args.data)
    overrides = {"epochs": args.epochs, "iters": args.iters, "lr": args.lr, "p": args.p, "k": args.k,
                 "ce_weight": args.ce_weight, "triplet_weight": args.triplet_weight, "devices": args.devices}
    cfg = apply_overrides(params.gem, overrides, "gem")
    summary = run_gem(params, request, cfg)
    if summary:  # DDP worker processes return nothing
        print(json.dumps(summary, indent=2))


def cmd_face_data(args) -> None:
    from embedlab.stages.face_data import write_face_data

    print(json.dumps(write_face_data(_params(args)), indent=2))


def cmd_triplet(args) -> None:
    from embedlab.stages.triplet import plan_phase, run_triplet

    params = _params(args)
    overrides = {"miner": args.miner, "lr": args.lr, "epochs": args.epochs, "init_from": args.init_from}
    print(json.dumps(run_triplet(params, plan_phase(params, args.phase, overrides)), indent=2))


def cmd_face_submission(args) -> None:
    from embedlab.stages.face_eval import write_face_submission

    print(json.dumps(write_face_submission(args.checkpoint, args.pairs, args.out, args.batch_size,
                                           args.num_workers), indent=2))


def cmd_templates(args) -> None:
    from embedlab.stages.templates import build_templates

    print(json.dumps(build_templates(_params(args)), indent=2))


def _bool(text: str) -> bool:
    """true/false as MLflow passes them (-P use_discriminator=false)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def cmd_decoder(args) -> None:
    from embedlab.stages.decoder import run_decoder

    params = _params(args)
    cfg = apply_overrides(params.decoder, {
        "perceptual_weight": args.perceptual_weight, "laplace_weight": args.laplace_weight,
        "mse_weight": args.mse_weight, "use_discriminator": args.use_discriminator,
        "discr_weight": args.discr_weight, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
        "variant": args.variant, "output_size": args.output_size}, "decoder")
    print(json.dumps(run_decoder(params, cfg=cfg), indent=2, default=str))


def cmd_export_onnx(args) -> None:
    from embedlab.models.face_models import export_onnx_face_model

    print(export_onnx_face_model(args.checkpoint, args.out))


def cmd_validate_decoder(args) -> None:
    from embedlab.stages.decoder import validate_decoder

    print(validate_decoder(_params(args), args.set, args.checkpoint))


def cmd_ensemble(args) -> None:
    from embedlab.stages.ensemble import run_ensemble

    print(json.dumps(run_ensemble(_params(args), args.members), indent=2))


def cmd_embed(args) -> None:
    from embedlab.stages.embed import embed_folder

    print(json.dumps(embed_folder(args.checkpoint, args.images, args.out, args.img_size, args.batch_size,
                                  args.num_workers, args.on_bad_image, args.device, args.channels_last,
                                  precision=args.precision, compile=args.compile, decode=args.decode,
                                  pin_memory=args.pin_memory,
                                  prefetch_factor=args.prefetch_factor), indent=2))


def workers_arg(text: str) -> int | str:
    """``auto`` or a number of DataLoader workers."""
    return "auto" if text == "auto" else int(text)


def cmd_evaluate_disc(args) -> None:
    from embedlab.stages.evaluate import evaluate_disc, format_metrics

    metrics = evaluate_disc(args.query, args.reference, args.ground_truth, Path(args.out), k=args.k,
                            query_subset=args.query_subset, reference_subset=args.reference_subset,
                            device=args.device)
    print(format_metrics(metrics))


def cmd_init_weights(args) -> None:
    from embedlab.stages.init_weights import write_initial_weights

    print(json.dumps(write_initial_weights(_params(args)), indent=2))


def cmd_use_profile(args) -> None:
    use_profile(args.params, args.name)
    print(f"{args.params}: now holds profile {args.name!r}; run `dvc repro`")


def cmd_report(args) -> None:
    from embedlab.report import results_report

    print(results_report(_params(args)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedlab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        p.set_defaults(func=func)
        return p

    p = command("demo-data", cmd_demo_data, "build the embedded demo data set (DISC layout) from packaged photos",
                "embedlab demo-data --out data/raw")
    p.add_argument("--out", default=None, help="output root (default: data.raw of params.yaml)")
    p.add_argument("--seed", type=int)
    p.add_argument("--n-training", type=int)
    p.add_argument("--n-reference", type=int)

    p = command("augment", cmd_augment, "generate an augmented training set (anchor + augmentations per class)",
                "embedlab augment --recipe bw --classes 100 --per-class 20 --size 256   (--show: the recipe's steps)")
    p.add_argument("--recipe", required=True, help="a recipe of augment.recipes in params.yaml (e.g. big, bw)")
    p.add_argument("--classes", type=int, help="at most this many source classes; 0: all (default: augment.classes)")
    p.add_argument("--per-class", type=int, help="images per class, anchor included (default: augment.per_class)")
    p.add_argument("--size", type=int, help="image size in pixels (default: augment.size)")
    p.add_argument("--workers", type=int, help="processes; 0: all cores (default: augment.workers)")
    p.add_argument("--seed", type=int, help="default: augment.seed")
    p.add_argument("--out", help="output folder (default: <augment.out>/<recipe>)")
    p.add_argument("--restart", action="store_true", help="delete the set's existing output and start afresh")
    p.add_argument("--if-stale", choices=("fail", "restart"), default="fail",
                   help="output made with other parameters: fail (default) or restart (dvc repro)")
    p.add_argument("--show", action="store_true", help="print the recipe's effective steps and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = command("drip", cmd_drip, "train one drip step (ArcFace over a growing class count)",
                "embedlab drip --n-facebook-samples 200 --n-imagenet-samples 0 --n-frm-face-samples 0 "
                "--batch-size 32 --qry-augs-intensity 0.5")
    p.add_argument("--step", help="a step name of drip.schedule in params.yaml")
    p.add_argument("--name", help="output folder name under models/drip (default: <classes>cls)")
    p.add_argument("--n-facebook-samples", type=int)
    p.add_argument("--n-imagenet-samples", type=int)
    p.add_argument("--n-frm-face-samples", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--qry-augs-intensity", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--build-w-matrix", help="previous step's checkpoint: start from its weights and class centroids")

    p = command("gem", cmd_gem, "train the GeM model (P×K batches, CE + triplet) on one generated training set",
                "embedlab gem --recipe big --epochs 4 --iters 20")
    p.add_argument("--recipe", help="generated set under augment.out (default: gem.recipe)")
    p.add_argument("--data", help="a generated set's folder (default: <augment.out>/<recipe>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iters", type=int, help="iterations per epoch")
    p.add_argument("--lr", type=float)
    p.add_argument("--p", type=int, help="identities per batch")
    p.add_argument("--k", type=int, help="images per identity")
    p.add_argument("--ce-weight", type=float)
    p.add_argument("--triplet-weight", type=float)
    p.add_argument("--devices", type=int, help=">1: DDP with one classifier shard per rank")

    command("face-data", cmd_face_data, "build the triplet stage's face data set (CSVs, validation pairs)",
            "embedlab face-data")

    p = command("triplet", cmd_triplet, "train one phase of the face encoder with a triplet loss",
                "embedlab triplet --phase finetune --miner hard --epochs 3")
    p.add_argument("--phase", choices=("pretrain", "finetune"), required=True)
    p.add_argument("--miner", choices=("all", "hard"))
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--init-from", help="a phase name or a .ckpt to start from; 'none': triplet.pretrained "
                   "(default: the phase's init_from in params.yaml)")

    p = command("face-submission", cmd_face_submission, "write pair_id,similarity for a folder of face pairs",
                "embedlab face-submission --checkpoint models/triplet/finetune/encoder.safetensors "
                "--pairs data/raw/faces/test_public --out submission.csv")
    p.add_argument("--checkpoint", required=True, help="a triplet .ckpt or an exported encoder .safetensors")
    p.add_argument("--pairs", required=True, help="folder of <pair_id>/0.jpg, 1.jpg")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)

    command("templates", cmd_templates, "embed the face photos with the template model: the decoder's "
            "training pairs", "embedlab templates")

    p = command("decoder", cmd_decoder, "train the template -> face decoder (perceptual loss through a frozen "
                "face model)", "embedlab decoder --perceptual-weight 11 --laplace-weight 0 --use-discriminator false")
    p.add_argument("--perceptual-weight", type=float)
    p.add_argument("--laplace-weight", type=float)
    p.add_argument("--mse-weight", type=float)
    p.add_argument("--use-discriminator", type=_bool, metavar="true|false")
    p.add_argument("--discr-weight", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--variant", choices=("base", "large"))
    p.add_argument("--output-size", type=int)

    p = command("validate-decoder", cmd_validate_decoder, "cosine between templates and the templates of their "
                "decoded faces (the original validate.py)", "embedlab validate-decoder --set test")
    p.add_argument("--set", default="test", choices=("train", "test"))
    p.add_argument("--checkpoint", help="a decoder .ckpt or exported decoder.safetensors "
                   "(default: models/decoder/checkpoints/last.ckpt)")

    p = command("export-onnx", cmd_export_onnx, "export a project encoder as an ONNX face model (RGB, "
                "(x - 127.5) / 127.5, like insightface's)", "embedlab export-onnx --checkpoint "
                "models/triplet/finetune/encoder.safetensors --out encoder.onnx")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)

    command("init-weights", cmd_init_weights, "write the backbone weights the first drip step starts from",
            "embedlab init-weights")

    p = command("embed", cmd_embed, "embed a folder of images into an ISC descriptor file (h5)",
                "embedlab embed --checkpoint models/drip/s1/checkpoints/last.ckpt --images data/raw/disc/query "
                "--out query.h5")
    p.add_argument("--checkpoint", required=True, help=".ckpt of a drip step or an exported .safetensors")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--img-size", type=int, help="model input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (large batches feed a GPU)")
    p.add_argument("--num-workers", type=workers_arg, default="auto",
                   help="DataLoader workers, or auto: all cores but one with a GPU, half (at most 8) on the CPU")
    p.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast dtype; auto: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on the CPU")
    p.add_argument("--channels-last", type=_bool, nargs="?", const=True, default=True,
                   help="NHWC memory format (default true; --channels-last false to turn off)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (one-off compile time)")
    p.add_argument("--decode", choices=("auto", "cpu", "gpu"), default="auto",
                   help="JPEG decoding: gpu (nvJPEG, batched) or cpu (Pillow in the workers); auto: gpu with CUDA")
    p.add_argument("--pin-memory", type=lambda t: "auto" if t == "auto" else _bool(t), default="auto")
    p.add_argument("--prefetch-factor", type=int, help="batches each worker prepares ahead (torch's default: 2)")

    p = command("evaluate-disc", cmd_evaluate_disc, "search and score query vs. reference descriptors (μAP)",
                "embedlab evaluate-disc --query query.h5 --reference reference.h5 "
                "--ground-truth data/raw/disc/ground_truth.csv --out eval")
    p.add_argument("--query", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--ground-truth", required=True)
    p.add_argument("--out", default="eval")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--query-subset", help="for seed-layout h5 files holding both sets: query")
    p.add_argument("--reference-subset", help="for seed-layout h5 files holding both sets: reference")
    p.add_argument("--device", default="auto")

    p = command("use-profile", cmd_use_profile, "write a profile of params.yaml (e.g. full) into its values",
                "embedlab use-profile full")
    p.add_argument("name")

    add_postprocess_parser(sub)
    add_sweep_parser(sub)
    p = command("ensemble", cmd_ensemble, "score the concatenated descriptors of trained models, before and after "
                "post-processing", "embedlab ensemble --members drip/s3 gem/big")
    p.add_argument("--members", nargs="+", help="<stage>/<name> of trained models (default: evaluate.ensemble)")
    command("report", cmd_report, "print the results table of the training stages", "embedlab report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        # Input problems (every such error names its file): one clear line, no traceback.
        if args.verbose:
            raise
        print(f"embedlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
