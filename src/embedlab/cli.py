"""The ``embedlab`` command: every DVC stage and MLflow entry point calls it."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
from pathlib import Path

from embedlab.cli_args import auto_or, optional, parse_bool
from embedlab.credentials import hide_passwords
from embedlab.const import METRICS_JSON, MODEL_STAGES
from embedlab.config import ConfigError, DripStep, Params, apply_overrides, load_params, use_profile
from embedlab.postprocess.cli import add_parser as add_postprocess_parser
from embedlab.stages.output_lock import OutputBusyError
from embedlab.sweep.cli import SweepFailedError, add_parser as add_sweep_parser


def _params(args, anywhere: bool = False):
    """params.yaml (``--params``). ``anywhere``: a command that works on any files (embed,
    evaluate-disc, face-submission) takes the defaults when run outside a project."""
    if anywhere and args.params == DEFAULT_PARAMS and not Path(DEFAULT_PARAMS).is_file():
        return Params()
    return load_params(args.params)


DEFAULT_PARAMS = "params.yaml"


def _default(func, name: str):
    """The default of ``func``'s argument ``name`` (where a stage writes, said once: in its signature)."""
    import inspect

    return inspect.signature(func).parameters[name].default


def _with_runtime(params, args):
    """``params`` with the runtime flags given on the command line (the others stay params.yaml's)."""
    values = {name: getattr(args, name, None) for name in RUNTIME_FLAGS}
    values["inference_batch_size"] = getattr(args, "inference_batch_size", None)
    return dataclasses.replace(params, runtime=apply_overrides(params.runtime, values, "runtime"))


# The runtime section's command-line flags: (name, argparse type, help). Each defaults to params.yaml's runtime.
RUNTIME_FLAGS = {
    "device": (str, "auto (the GPU when there is one) | cpu | cuda | cuda:N"),
    "precision": (str, "auto | fp32 | bf16 | fp16 (autocast)"),
    "channels_last": (parse_bool, "NHWC memory format: true | false"),
    "compile": (parse_bool, "torch.compile the backbone: true | false"),
    "num_workers": (auto_or(int), "DataLoader workers, or auto"),
    "pin_memory": (auto_or(parse_bool), "true | false | auto (on with CUDA)"),
    "prefetch_factor": (int, "batches each worker prepares ahead"),
    "decode": (str, "embedding's JPEG decoding: auto | cpu | gpu"),
    "devices": (int, "processes: DDP ranks when training, one per GPU when embedding"),
}


def add_runtime_flags(p: argparse.ArgumentParser, names: tuple[str, ...], batch: bool = False) -> None:
    group = p.add_argument_group("runtime (default: params.yaml's runtime section; speed only)")
    for name in names:
        kind, text = RUNTIME_FLAGS[name]
        group.add_argument(f"--{name.replace('_', '-')}", type=optional(kind), help=text)
    if batch:
        group.add_argument("--batch-size", dest="inference_batch_size", type=optional(int),
                           help="images per batch (runtime.inference_batch_size)")


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
    from embedlab.augment.generator import MANIFEST
    from embedlab.stages.augment import preview_augment, run_augment, show_recipe
    from embedlab.summary_line import augment_line

    params = _params(args)
    overrides = {"classes": args.classes, "per_class": args.per_class, "size": args.size, "seed": args.seed}
    if args.workers is not None:
        params = dataclasses.replace(params, runtime=apply_overrides(params.runtime, {"augment_workers": args.workers}))
    if args.show:
        print(show_recipe(params, args.recipe, overrides, args.params))
        return
    if args.preview:
        print(preview_augment(params, args.recipe, args.preview, overrides, args.params))
        return
    manifest, out = run_augment(params, args.recipe, overrides, out=args.out, restart=args.restart,
                                if_stale=args.if_stale, progress=not args.no_progress, params_file=args.params)
    print(augment_line(manifest, out, Path(out) / MANIFEST))


def cmd_drip(args) -> None:
    from embedlab.stages.drip import DripRequest, plan_scheduled_step, run_drip
    from embedlab.summary_line import retrieval_line

    params = _params(args)
    sizes = (args.n_facebook_samples, args.n_imagenet_samples, args.n_frm_face_samples)
    overrides = {"batch_size": args.batch_size, "qry_augs_intensity": args.qry_augs_intensity, "epochs": args.epochs}
    if all(n is None for n in sizes):
        if not params.drip_schedule:
            raise ConfigError(f"{args.params}: drip_schedule is empty; give --n-facebook-samples N")
        request = plan_scheduled_step(params, args.step or next(iter(params.drip_schedule)))
        request.step = apply_overrides(request.step, overrides, "drip")
    else:
        if args.step:
            raise ConfigError("embedlab drip: --step trains a step of drip_schedule; the --n-*-samples flags "
                              "describe another step: give one or the other")
        step = apply_overrides(DripStep(n_facebook_samples=0), {
            "n_facebook_samples": sizes[0], "n_imagenet_samples": sizes[1], "n_frm_face_samples": sizes[2],
            **overrides}, "drip")
        name = args.name or f"{step.n_facebook_samples + step.n_imagenet_samples + step.n_frm_face_samples}cls"
        request = DripRequest(name=name, step=step)
    if args.build_w_matrix is not None:
        request.build_w_matrix = args.build_w_matrix
    summary = run_drip(_with_runtime(params, args), request)
    if summary:  # DDP worker processes return nothing
        print(retrieval_line(request.mlflow_run_name, summary, request.report_dir / METRICS_JSON))


def cmd_gem(args) -> None:
    from embedlab.stages.gem import plan_gem, run_gem
    from embedlab.summary_line import retrieval_line

    params = _params(args)
    overrides = {"epochs": args.epochs, "iters": args.iters, "lr": args.lr, "p": args.p, "k": args.k,
                 "ce_weight": args.ce_weight, "triplet_weight": args.triplet_weight}
    request = plan_gem(params, args.recipe, args.data, apply_overrides(params.gem, overrides, "gem"), args.start)
    summary = run_gem(_with_runtime(params, args), request)
    if summary:  # DDP worker processes return nothing
        print(retrieval_line(request.mlflow_run_name, summary, request.report_dir / METRICS_JSON))


def cmd_face_data(args) -> None:
    from embedlab.stages.face_data import write_face_data
    from embedlab.summary_line import face_data_line

    summary = write_face_data(_params(args))
    print(face_data_line(summary, Path(summary["out"]) / "labels_info.json"))


def cmd_triplet(args) -> None:
    from embedlab.stages.triplet import plan_phase, run_triplet
    from embedlab.summary_line import triplet_line

    params = _params(args)
    overrides = {"miner": args.miner, "lr": args.lr, "epochs": args.epochs, "init_from": args.init_from}
    request = plan_phase(params, args.phase, overrides)
    summary = run_triplet(_with_runtime(params, args), request)
    if summary:  # DDP worker processes return nothing
        print(triplet_line(request.mlflow_run_name, summary, request.report_dir / METRICS_JSON))


def cmd_face_submission(args) -> None:
    from embedlab.evaluation.face_pairs import write_face_submission

    params = _params(args, anywhere=True)
    print(json.dumps(write_face_submission(args.checkpoint, args.pairs, args.out, _with_runtime(params, args).runtime),
                     indent=2))


def cmd_templates(args) -> None:
    from embedlab.stages.templates import build_templates
    from embedlab.summary_line import templates_line

    params = _params(args)
    print(templates_line(build_templates(params), Path(params.templates.out) / "manifest.json"))


def cmd_decoder(args) -> None:
    from embedlab.stages.decoder import DecoderRequest, run_decoder
    from embedlab.summary_line import decoder_line

    params = _params(args)
    cfg = apply_overrides(params.decoder, {
        "perceptual_weight": args.perceptual_weight, "laplace_weight": args.laplace_weight,
        "mse_weight": args.mse_weight, "use_discriminator": args.use_discriminator,
        "discr_weight": args.discr_weight, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
        "variant": args.variant, "output_size": args.output_size}, "decoder")
    request = DecoderRequest(cfg)
    summary = run_decoder(_with_runtime(params, args), request)
    if summary:  # DDP worker processes return nothing
        print(decoder_line(request.mlflow_run_name, summary, request.report_dir / METRICS_JSON))


def cmd_export_onnx(args) -> None:
    from embedlab.models.face_models import export_onnx_face_model

    print(export_onnx_face_model(args.checkpoint, args.out))


def cmd_export(args) -> None:
    from embedlab.model_export import export_model

    print(json.dumps(export_model(args.checkpoint, args.out, args.format), indent=2))


def cmd_register(args) -> None:
    from embedlab.model_registry import register_best

    params = _params(args, anywhere=True)
    print(json.dumps(register_best(args.stage, params.tracking.experiment, args.metric, args.mode, args.alias,
                                   args.name, args.filter, params.tracking.uri), indent=2))


def cmd_validate_decoder(args) -> None:
    from embedlab.stages.decoder import validate_decoder

    print(validate_decoder(_params(args), args.set, args.checkpoint))


def cmd_baseline(args) -> None:
    from embedlab.stages.baseline import NAME, run_baseline
    from embedlab.summary_line import retrieval_line

    print(retrieval_line(f"baseline/{NAME}", run_baseline(_params(args)), _default(run_baseline, "report_dir")
                         / METRICS_JSON))


def cmd_robustness_set(args) -> None:
    from embedlab.data.robustness import MANIFEST, build_robustness_set
    from embedlab.summary_line import robustness_set_line

    params = _params(args)
    out = Path(params.robustness.out)
    print(robustness_set_line(build_robustness_set(params), out, out / MANIFEST))


def cmd_robustness(args) -> None:
    from embedlab.evaluation.robustness import run_robustness
    from embedlab.summary_line import robustness_line

    print(robustness_line(run_robustness(_params(args)), _default(run_robustness, "report_dir") / METRICS_JSON))


def cmd_ensemble(args) -> None:
    from embedlab.stages.ensemble import run_ensemble
    from embedlab.summary_line import retrieval_line

    summary = run_ensemble(_params(args), args.members)
    print(retrieval_line(f"ensemble of {' + '.join(summary['members'])}", summary,
                         _default(run_ensemble, "report_dir") / METRICS_JSON))


def cmd_embed(args) -> None:
    from embedlab.evaluation.embed import embed_folder

    params = _params(args, anywhere=True)
    print(json.dumps(embed_folder(args.checkpoint, args.images, args.out, args.img_size,
                                  args.on_bad_image or params.data.on_bad_image, _with_runtime(params, args).runtime),
                     indent=2))


def cmd_index(args) -> None:
    from embedlab.search_index import build_index

    params = _params(args, anywhere=True)
    print(json.dumps(build_index(args.model, args.images, args.out, args.kind, args.threshold, args.threshold_from,
                                 args.nlist, args.m, args.on_bad_image or params.data.on_bad_image,
                                 _with_runtime(params, args).runtime), indent=2))


def cmd_search(args) -> None:
    from embedlab.search_index import search_images

    params = _params(args, anywhere=True)
    print(json.dumps(search_images(args.index, args.images, args.out, args.k, args.threshold, args.model,
                                   args.on_bad_image or params.data.on_bad_image,
                                   _with_runtime(params, args).runtime), indent=2))


def cmd_evaluate_disc(args) -> None:
    from embedlab.evaluation.disc_search import evaluate_disc, format_metrics

    params = _params(args, anywhere=True)
    metrics = evaluate_disc(args.query, args.reference, args.ground_truth, Path(args.out),
                            k=args.k or params.evaluate.k, query_subset=args.query_subset,
                            reference_subset=args.reference_subset, device=args.device or params.runtime.device)
    print(format_metrics(metrics))


def cmd_submission(args) -> None:
    from embedlab.evaluation.submission import write_disc_submission

    params = _params(args, anywhere=True)
    print(json.dumps(write_disc_submission(args.query, args.reference, args.out, k=args.k or params.evaluate.k,
                                           limit=args.max_predictions, device=args.device or params.runtime.device),
                     indent=2))


def cmd_drip_cache(args) -> None:
    from embedlab.data.drip import class_folders
    from embedlab.data.image_cache import build_drip_cache
    from embedlab.summary_line import drip_cache_line

    params = _params(args)
    if not params.data.drip_cache:
        raise ConfigError(f"{args.params}: data.drip_cache is null (drip decodes the originals): nothing to build")
    summary = build_drip_cache(class_folders(params.data), params.data.drip_cache, params.drip.aug_size,
                               params.data.on_bad_image)
    print(drip_cache_line(summary, params.data.drip_cache))


def cmd_init_weights(args) -> None:
    from embedlab.stages.init_weights import write_initial_weights
    from embedlab.summary_line import init_weights_line

    print(init_weights_line(write_initial_weights(_params(args))))


def cmd_use_profile(args) -> None:
    use_profile(args.params, args.name)
    print(f"{args.params}: now holds profile {args.name!r}; run `dvc repro`")


def cmd_report(args) -> None:
    from embedlab.report import results_report

    print(results_report(_params(args), markdown=args.markdown))


def cmd_import(args) -> None:
    from embedlab.data.disc21_import import import_disc21
    from embedlab.data.kryptonite_import import import_kryptonite
    from embedlab.data.photo_list import import_photo_table

    params = _params(args)
    on_bad_image = args.on_bad_image or params.data.on_bad_image
    if args.kind == "pairs":
        out = args.out or params.templates.photos
        if not out:
            raise ConfigError("embedlab import pairs: give --out (or set templates.photos in params.yaml)")
        summary = import_photo_table(args.src, args.root or Path(args.src).parent, out, on_bad_image)
    elif args.kind == "disc21":
        summary = import_disc21(args.src, args.out or params.data.disc, queries=args.queries,
                                on_bad_image=on_bad_image, images=args.images or "store")
    else:
        summary = import_kryptonite(args.src, args.out or params.data.faces, on_bad_image=on_bad_image,
                                    images=args.images or "store")
    print(json.dumps(summary, indent=2))


def cmd_pack(args) -> None:
    from embedlab.data.shards import pack_folder

    for folder in args.folders:
        manifest = pack_folder(folder)
        print(f"{folder}: {manifest['count']} images in {len(manifest['shards'])} shards")


def cmd_code_deps(args) -> None:
    from embedlab.code_deps import write_code_deps
    from embedlab.summary_line import code_deps_line

    print(code_deps_line(write_code_deps(Path(args.out)), args.out))


def build_parser() -> argparse.ArgumentParser:
    """Every command; a flag that is not given takes params.yaml's value (its help names the setting)."""
    parser = argparse.ArgumentParser(prog="embedlab", description=__doc__)
    parser.add_argument("-v", "--verbose", "--debug", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str, example: str, params: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if params:
            p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        p.set_defaults(func=func)
        return p

    o_int, o_float, o_str, o_bool = optional(int), optional(float), optional(str), optional(parse_bool)

    p = command("demo-data", cmd_demo_data, "build the embedded demo data set (DISC layout) from packaged photos",
                "embedlab demo-data --out data/raw")
    p.add_argument("--out", type=o_str, help="output root (default: data.raw)")
    p.add_argument("--seed", type=o_int, help="default: demo_data.seed")
    p.add_argument("--n-training", type=o_int, help="DISC training images (default: demo_data.n_training)")
    p.add_argument("--n-reference", type=o_int, help="DISC reference images (default: demo_data.n_reference)")

    p = command("augment", cmd_augment, "generate an augmented training set (anchor + augmentations per class)",
                "embedlab augment --recipe bw --classes 100 --per-class 20 --size 256   (--show: the recipe's steps)")
    p.add_argument("--recipe", required=True, help="a recipe of augment.recipes in params.yaml (e.g. big, bw)")
    p.add_argument("--classes", type=o_int, help="at most this many source classes; 0: all (default: augment.classes)")
    p.add_argument("--per-class", type=o_int, help="images per class, anchor included (default: augment.per_class)")
    p.add_argument("--size", type=o_int, help="image size in pixels (default: augment.size)")
    p.add_argument("--workers", type=o_int, help="processes; 0: all cores (default: runtime.augment_workers)")
    p.add_argument("--seed", type=o_int, help="default: augment.seed")
    p.add_argument("--out", type=o_str, help="output folder (default: <augment.out>/<recipe>)")
    p.add_argument("--restart", action="store_true", help="delete the set's existing output and start afresh")
    p.add_argument("--if-stale", choices=("fail", "restart"), default="fail",
                   help="output made with other parameters: fail (default) or restart (dvc repro)")
    p.add_argument("--show", action="store_true", help="print the recipe's effective steps and exit")
    p.add_argument("--preview", type=o_str, metavar="PNG",
                   help="write a picture of a few classes as the set holds them (anchor + augmentations) and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = command("drip", cmd_drip, "train one drip step (ArcFace over a growing class count)",
                "embedlab drip --step s2   (or --n-facebook-samples 200 --name mystep: a step of your own)")
    p.add_argument("--step", type=o_str, help="a step of drip_schedule (default: its first step)")
    p.add_argument("--name", type=o_str, help="with --n-*-samples: the output folder under models/drip "
                   "(default: <classes>cls)")
    p.add_argument("--n-facebook-samples", type=o_int, help="a step of your own: DISC training classes")
    p.add_argument("--n-imagenet-samples", type=o_int, help="a step of your own: ImageNet classes (default: 0)")
    p.add_argument("--n-frm-face-samples", type=o_int, help="a step of your own: face-frame classes (default: 0)")
    p.add_argument("--batch-size", type=o_int, help="default: the step's, else drip.batch_size")
    p.add_argument("--qry-augs-intensity", type=o_float, help="default: the step's, else drip.qry_augs_intensity")
    p.add_argument("--epochs", type=o_int, help="default: the step's, else drip.epochs")
    p.add_argument("--build-w-matrix", type=optional(Path), help="previous step's checkpoint: start from its "
                   "weights and class centroids (default: the step's init_from)")
    add_runtime_flags(p, ("device", "precision", "compile", "num_workers", "devices"))

    p = command("gem", cmd_gem, "train the GeM model (P×K batches, CE + triplet) on one generated training set",
                "embedlab gem --recipe big --start imagenet --epochs 4 --iters 20")
    p.add_argument("--recipe", type=o_str, help="generated set under augment.out (default: the first of pipeline.gem)")
    p.add_argument("--data", type=o_str, help="a generated set's folder (default: <augment.out>/<recipe>)")
    p.add_argument("--start", type=o_str, help="starting weights: a name in gem_starts (default: the first of "
                   "pipeline.gem_starts)")
    p.add_argument("--epochs", type=o_int, help="default: gem.epochs")
    p.add_argument("--iters", type=o_int, help="iterations per epoch (default: gem.iters)")
    p.add_argument("--lr", type=o_float, help="default: gem.lr")
    p.add_argument("--p", type=o_int, help="identities per batch (default: gem.p)")
    p.add_argument("--k", type=o_int, help="images per identity (default: gem.k)")
    p.add_argument("--ce-weight", type=o_float, help="default: gem.ce_weight")
    p.add_argument("--triplet-weight", type=o_float, help="default: gem.triplet_weight")
    add_runtime_flags(p, ("device", "precision", "compile", "num_workers", "devices"))

    command("face-data", cmd_face_data, "build the triplet stage's face data set (CSVs, validation pairs)",
            "embedlab face-data")

    p = command("triplet", cmd_triplet, "train one phase of the face encoder with a triplet loss",
                "embedlab triplet --phase finetune --miner hard --epochs 3")
    p.add_argument("--phase", choices=("pretrain", "finetune"), required=True, help="a phase of triplet_phases")
    p.add_argument("--miner", type=o_str, help="all | hard (default: triplet_phases.<phase>.miner)")
    p.add_argument("--lr", type=o_float, help="default: triplet_phases.<phase>.lr")
    p.add_argument("--epochs", type=o_int, help="default: triplet_phases.<phase>.epochs")
    p.add_argument("--init-from", type=o_str, help="a phase name or a .ckpt to start from; 'none': "
                   "triplet.pretrained (default: triplet_phases.<phase>.init_from)")
    add_runtime_flags(p, ("device", "precision", "compile", "num_workers", "devices"))

    p = command("face-submission", cmd_face_submission, "write pair_id,similarity for a folder of face pairs",
                "embedlab face-submission --checkpoint models/triplet/finetune/encoder.safetensors "
                "--pairs data/raw/faces/test_public --out submission.csv")
    p.add_argument("--checkpoint", required=True, help="a triplet .ckpt or an exported encoder .safetensors")
    p.add_argument("--pairs", required=True, help="folder of <pair_id>/0.jpg, 1.jpg")
    p.add_argument("--out", required=True, help="the submission CSV (pair_id,similarity)")
    add_runtime_flags(p, ("device", "precision", "num_workers"), batch=True)

    command("templates", cmd_templates, "embed the face photos with the template model: the decoder's "
            "training pairs", "embedlab templates")

    p = command("decoder", cmd_decoder, "train the template -> face decoder (perceptual loss through a frozen "
                "face model)", "embedlab decoder --perceptual-weight 11 --laplace-weight 0 --use-discriminator false")
    p.add_argument("--perceptual-weight", type=o_float, help="default: decoder.perceptual_weight")
    p.add_argument("--laplace-weight", type=o_float, help="default: decoder.laplace_weight")
    p.add_argument("--mse-weight", type=o_float, help="default: decoder.mse_weight")
    p.add_argument("--use-discriminator", type=o_bool, metavar="true|false", help="default: decoder.use_discriminator")
    p.add_argument("--discr-weight", type=o_float, help="default: decoder.discr_weight")
    p.add_argument("--epochs", type=o_int, help="default: decoder.epochs")
    p.add_argument("--lr", type=o_float, help="default: decoder.lr")
    p.add_argument("--batch-size", type=o_int, help="default: decoder.batch_size")
    p.add_argument("--variant", type=o_str, help="base | large (default: decoder.variant)")
    p.add_argument("--output-size", type=o_int, help="default: decoder.output_size")
    add_runtime_flags(p, ("device", "precision", "compile", "num_workers", "devices"))

    p = command("validate-decoder", cmd_validate_decoder, "cosine between templates and the templates of their "
                "decoded faces (the original validate.py)", "embedlab validate-decoder --set test")
    p.add_argument("--set", default="test", choices=("train", "test"), help="the template split to decode")
    p.add_argument("--checkpoint", help="a decoder .ckpt or exported decoder.safetensors "
                   "(default: models/decoder/checkpoints/last.ckpt)")

    p = command("export-onnx", cmd_export_onnx, "export a project encoder as an ONNX face model (RGB, "
                "(x - 127.5) / 127.5, like insightface's; `embedlab export` writes any descriptor model as its "
                "PyTorch forward)", "embedlab export-onnx --checkpoint "
                "models/triplet/finetune/encoder.safetensors --out encoder.onnx", params=False)
    p.add_argument("--checkpoint", required=True, help="a triplet .ckpt or an exported encoder .safetensors")
    p.add_argument("--out", required=True, help="the .onnx file to write")

    p = command("export", cmd_export, "export a descriptor model (drip, GeM, face encoder) to ONNX or TorchScript: "
                "ImageNet-normalised images in, the descriptor out, checked against PyTorch before it is written",
                "embedlab export --checkpoint models/drip/s2/descriptor_model.safetensors --out drip.onnx",
                params=False)
    p.add_argument("--checkpoint", required=True, help="an exported .safetensors (+ .json) or a stage's .ckpt")
    p.add_argument("--out", required=True, help="the file to write (.onnx, or .pt for TorchScript)")
    p.add_argument("--format", type=o_str, choices=("onnx", "torchscript"),
                   help="default: by the file name (.onnx: onnx; .pt, .ts: torchscript)")

    p = command("register", cmd_register, "register the logged model of a stage's best finished run as a new "
                "model version and point an alias at it",
                "embedlab register --stage drip   (best μAP -> models:/embedlab-drip@champion)")
    p.add_argument("--stage", required=True, choices=MODEL_STAGES, help="the training stage")
    p.add_argument("--metric", type=o_str, help="the run metric that picks the best (default: the stage's "
                   "headline, as its sweep optimises it: uAP, triplet: valid_eer)")
    p.add_argument("--mode", type=o_str, choices=("max", "min"), help="whether higher or lower --metric is "
                   "better (default: the headline's direction; required for another metric)")
    p.add_argument("--alias", type=o_str, help="the alias set on the new version (default: champion)")
    p.add_argument("--name", type=o_str, help="the registered model (default: embedlab-<stage>)")
    p.add_argument("--filter", type=o_str, help="an MLflow run filter the candidates must also match, e.g. "
                   "\"tags.embedlab.drip_step = 's3'\"")

    command("drip-cache", cmd_drip_cache, "decode and resize drip's class images once, to drip.aug_size, into "
            "image stores under data.drip_cache (what drip reads)", "embedlab drip-cache")
    command("init-weights", cmd_init_weights, "write the backbone weights the first drip step starts from",
            "embedlab init-weights")

    p = command("embed", cmd_embed, "embed a folder of images into an ISC descriptor file (h5)",
                "embedlab embed --checkpoint models/drip/s1/checkpoints/last.ckpt --images data/raw/disc/query "
                "--out query.h5")
    p.add_argument("--checkpoint", required=True, help=".ckpt of a drip step or an exported .safetensors")
    p.add_argument("--images", required=True, help="a folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="the descriptor file to write (h5, ISC layout)")
    p.add_argument("--img-size", type=o_int, help="model input size (default: the checkpoint's)")
    p.add_argument("--on-bad-image", type=o_str, help="fail | skip (default: data.on_bad_image)")
    add_runtime_flags(p, tuple(RUNTIME_FLAGS), batch=True)

    p = command("index", cmd_index, "embed reference images with a trained model and save their search index",
                "embedlab index build --model models/drip/s2/descriptor_model.safetensors --images "
                "data/raw/disc/reference --out indexes/disc --threshold-from models/drip/s2/eval/metrics.json")
    p.add_argument("action", choices=("build",), help="build: embed the references and write the index folder")
    p.add_argument("--model", required=True, help="an exported descriptor model (.safetensors) or a .ckpt")
    p.add_argument("--images", required=True, help="the reference images (a folder or an image store)")
    p.add_argument("--out", required=True, help="the index folder to write")
    p.add_argument("--kind", choices=("flat", "flat16", "ivfpq"), default="flat",
                   help="flat: exact inner product (default); flat16: the same in half the bytes; ivfpq: "
                        "compressed, for references beyond memory")
    p.add_argument("--threshold", type=o_float, help="score a match must reach")
    p.add_argument("--threshold-from", type=o_str, help="an evaluation's metrics.json: its threshold_at_p90")
    p.add_argument("--nlist", type=o_int, help="ivfpq: inverted lists (default: 4·√references)")
    p.add_argument("--m", type=o_int, help="ivfpq: sub-quantisers, dividing the descriptor size (default: dim/4)")
    p.add_argument("--on-bad-image", type=o_str, help="fail | skip (default: data.on_bad_image)")
    add_runtime_flags(p, tuple(RUNTIME_FLAGS), batch=True)

    p = command("search", cmd_search, "match new images against a saved index: query_id,reference_id,score "
                "of the pairs above the index's threshold (CSV)",
                "embedlab search --index indexes/disc --images new_photos --out matches.csv")
    p.add_argument("--index", required=True, help="an index folder of `embedlab index build`")
    p.add_argument("--images", required=True, help="the images to match (a folder or an image store)")
    p.add_argument("--out", required=True, help="the CSV to write")
    p.add_argument("--k", type=int, default=10, help="nearest references looked at per image (default: 10)")
    p.add_argument("--threshold", type=o_float, help="default: the index's (the evaluation's P90 threshold)")
    p.add_argument("--model", type=o_str, help="default: the index's model (another one is refused)")
    p.add_argument("--on-bad-image", type=o_str, help="fail | skip (default: data.on_bad_image)")
    add_runtime_flags(p, tuple(RUNTIME_FLAGS), batch=True)

    p = command("evaluate-disc", cmd_evaluate_disc, "search and score query vs. reference descriptors (μAP)",
                "embedlab evaluate-disc --query query.h5 --reference reference.h5 "
                "--ground-truth data/raw/disc/ground_truth.csv --out eval")
    p.add_argument("--query", required=True, help="query descriptors (h5)")
    p.add_argument("--reference", required=True, help="reference descriptors (h5)")
    p.add_argument("--ground-truth", required=True, help="query_id,reference_id CSV")
    p.add_argument("--out", default="eval", help="folder for predictions, metrics and the PR curve (default: eval)")
    p.add_argument("--k", type=o_int, help="neighbours per query (default: evaluate.k)")
    p.add_argument("--query-subset", help="for seed-layout h5 files holding both sets: query")
    p.add_argument("--reference-subset", help="for seed-layout h5 files holding both sets: reference")
    p.add_argument("--device", type=o_str, help="faiss device: auto | cpu | cuda (default: runtime.device)")

    p = command("submission", cmd_submission, "a DISC21 submission: the phase-1 descriptor h5 and a predictions "
                "CSV capped at the rules' 500,000 rows", "embedlab submission disc --query query.h5 --reference "
                "reference.h5 --out submission")
    p.add_argument("challenge", choices=("disc",), help="disc: ISC 2021 / DISC21")
    p.add_argument("--query", required=True, help="query descriptors (h5, as `embedlab embed` writes them)")
    p.add_argument("--reference", required=True, help="reference descriptors (h5)")
    p.add_argument("--out", required=True, help="folder for descriptors.h5 and predictions.csv")
    p.add_argument("--k", type=o_int, help="neighbours per query in the predictions (default: evaluate.k)")
    p.add_argument("--max-predictions", type=int, default=500_000,
                   help="rows kept, the highest scores (default: the rules' 500,000)")
    p.add_argument("--device", type=o_str, help="faiss device: auto | cpu | cuda (default: runtime.device)")

    p = command("use-profile", cmd_use_profile, "write a profile of params.yaml (e.g. full) into its values",
                "embedlab use-profile full")
    p.add_argument("name", help="a profile of params.yaml's profiles section")

    add_postprocess_parser(sub)
    add_sweep_parser(sub)
    command("baseline", cmd_baseline, "score the 64-bit perceptual hash (no training) on the DISC sets, as the "
            "models are scored", "embedlab baseline")
    command("robustness-set", cmd_robustness_set, "edit DISC references with a held-out edit family (screenshots, "
            "memes, heavy crops, stickers, recaptures, combinations) into a second query set, with distractors",
            "embedlab robustness-set")
    command("robustness", cmd_robustness, "score robustness.members on the robustness set: μAP overall and per "
            "edit kind, a table and a plot", "embedlab robustness")
    p = command("ensemble", cmd_ensemble, "score the concatenated descriptors of trained models, before and after "
                "post-processing", "embedlab ensemble --members drip/s3 gem/imagenet/big")
    p.add_argument("--members", nargs="+", help="<stage>/<name> of trained models (default: evaluate.ensemble)")
    p = command("import", cmd_import, "check a published data set as downloaded and write it in the project's "
                "layout (disc21: the train / references / queries folders and the ground-truth CSV; kryptonite: "
                "train/meta.json, train/images and test_public; pairs: a CSV or Parquet table of the decoder's "
                "photos, columns path and person)",
                "embedlab import disc21 ~/downloads/disc21 --out data/raw/disc")
    p.add_argument("kind", choices=("disc21", "kryptonite", "pairs"), help="the published data set")
    p.add_argument("src", help="the download's folder, as unpacked (pairs: the table)")
    p.add_argument("--out", type=o_str, help="the project's layout (default: data.disc; kryptonite: data.faces; "
                   "pairs: templates.photos)")
    p.add_argument("--root", type=o_str, help="pairs: the folder the table's paths are relative to "
                   "(default: the table's folder)")
    p.add_argument("--queries", choices=("dev", "final"), default="dev",
                   help="which query set and ground truth: dev (default) or final")
    p.add_argument("--on-bad-image", type=o_str, help="fail | skip (default: data.on_bad_image)")
    p.add_argument("--images", choices=("store", "hardlink", "copy"),
                   help="how the images are written: image stores of tar shards (the default; kryptonite: its "
                   "training images, keyed <person>/<i>), hard links or copies of the files")
    p = command("pack", cmd_pack, "turn folders of images into image stores in place (tar shards + index: a few "
                "files for DVC instead of one per image; every stage reads both)", "embedlab pack data/raw/imagenet",
                params=False)
    p.add_argument("folders", nargs="+", help="folders of images (one suffix each)")
    p = command("code-deps", cmd_code_deps, "write each DVC stage's code files and digests (what dvc.yaml's "
                "stages depend on instead of the whole package)", "embedlab code-deps --out reports/code",
                params=False)
    p.add_argument("--out", default="reports/code", help="folder for <stage>.txt (default: reports/code)")
    p = command("report", cmd_report, "print the results table of the training stages", "embedlab report --markdown")
    p.add_argument("--markdown", action="store_true", help="GitHub-markdown tables (what the README shows)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # An unreachable tracking server fails in seconds, not after MLflow's default 7 retries (about 4 minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from embedlab.log_noise import quiet_third_party, wanted

    if not args.verbose and wanted():  # --verbose or EMBEDLAB_QUIET=0: every third-party line (log_noise.py)
        quiet_third_party()
    try:
        args.func(args)
    except Exception as exc:
        # Input problems, a busy output folder, a full disk, a failed sweep, an unreachable tracking server (each
        # names its file, setting or URI): one clear line, no traceback.
        if args.verbose or not _user_facing(exc):
            raise
        print(f"embedlab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


USER_FACING = (ConfigError, ValueError, OSError, OutputBusyError, SweepFailedError)


def _user_facing(exc: BaseException) -> bool:
    """An error the user can act on from its message: the project's input errors, a busy folder, a full disk,
    and MLflow's (an unreachable or refusing tracking server; matched by name: importing mlflow here would
    cost every command a second)."""
    return isinstance(exc, USER_FACING) or any(
        c.__module__ == "mlflow.exceptions" and c.__name__ == "MlflowException" for c in type(exc).__mro__)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full while writing {exc.filename or 'an output file'}: free space and run again"
    text = str(exc).strip() or repr(exc)
    if not isinstance(exc, USER_FACING):  # MLflow's: the first line says it, the rest dumps the request
        text = text.splitlines()[0]
    return hide_passwords(text)


if __name__ == "__main__":
    sys.exit(main())
