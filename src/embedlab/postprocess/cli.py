"""The ``embedlab postprocess`` sub-command (registered by :mod:`embedlab.cli`)."""

from __future__ import annotations

import argparse

EXAMPLE = ("embedlab postprocess --query q_m1.h5 q_m2.h5 --reference r_m1.h5 r_m2.h5 --train t_m1.h5 t_m2.h5 "
           "--out models/postprocess --whiten-dim 256 --score-norm-factor 2 --score-norm-n 10")
HELP = "ensemble, whiten, stretch and score-normalise descriptor files (ISC layout out)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``postprocess`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from embedlab.cli_args import parse_bool
    from embedlab.config import PostprocessConfig

    d = PostprocessConfig()
    p = subparsers.add_parser("postprocess", help=HELP, description=HELP, epilog=f"example:\n  {EXAMPLE}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--query", nargs="+", required=True, metavar="Q.h5",
                   help="query descriptors, one file per model (seed-layout files: their 'query' part)")
    p.add_argument("--reference", nargs="+", required=True, metavar="R.h5",
                   help="reference descriptors, one file per model, same model order")
    p.add_argument("--train", nargs="+", default=[], metavar="T.h5",
                   help="training-set descriptors, one file per model, same model order "
                        "(needed for whitening, stretching and score normalisation)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes DIR/query.h5, DIR/reference.h5, DIR/whitening.safetensors, DIR/postprocess.json")
    p.add_argument("--whiten", type=parse_bool, metavar="true|false", default=d.whiten,
                   help=f"PCA whitening fitted on the training descriptors (default: {str(d.whiten).lower()})")
    p.add_argument("--whiten-dim", type=int, metavar="N", default=d.whiten_dim, help="dimensions kept (default: all)")
    p.add_argument("--whiten-power", type=float, metavar="P", default=d.whiten_power,
                   help=f"eigenvalue power: 0.5 full whitening, 0 plain PCA (default: {d.whiten_power})")
    p.add_argument("--score-norm-factor", type=float, metavar="F", default=d.score_norm_factor,
                   help=f"s' = q.r - F * mean top-n q.train; 0 = off (default: {d.score_norm_factor})")
    p.add_argument("--score-norm-n", type=int, metavar="N", default=d.score_norm_n, help=f"default: {d.score_norm_n}")
    p.add_argument("--stretch-factor", type=float, metavar="F", default=d.stretch_factor,
                   help=f"q' = exp(-F * mean top-n q.train) * q; 0 = off (default: {d.stretch_factor})")
    p.add_argument("--stretch-n", type=int, metavar="N", default=d.stretch_n, help=f"default: {d.stretch_n}")
    p.add_argument("--train-norm-factor", type=float, metavar="F", default=d.train_norm_factor,
                   help="training-set normalisation: x' = x + F * sqrt(mean top-k cosines) * d, d away from the n "
                        f"nearest training descriptors; the original's 1.8; 0 = off (default: {d.train_norm_factor})")
    p.add_argument("--train-norm-n", type=int, metavar="N", default=d.train_norm_n, help=f"default: {d.train_norm_n}")
    p.add_argument("--train-norm-top", type=int, metavar="K", default=d.train_norm_top,
                   help=f"default: {d.train_norm_top}")
    p.add_argument("--weights", type=float, nargs="+", metavar="W", help="ensemble weight per model (default: all 1)")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"),
                   help="faiss device for the training-neighbour search")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> dict:
    """Run :func:`postprocess_files` from parsed arguments and print its summary."""
    from embedlab.config import PostprocessConfig
    from embedlab.postprocess.pipeline import format_summary, postprocess_files

    cfg = PostprocessConfig(
        whiten=args.whiten, whiten_dim=args.whiten_dim, whiten_power=args.whiten_power,
        score_norm_factor=args.score_norm_factor, score_norm_n=args.score_norm_n,
        stretch_factor=args.stretch_factor, stretch_n=args.stretch_n, train_norm_factor=args.train_norm_factor,
        train_norm_n=args.train_norm_n, train_norm_top=args.train_norm_top,
        weights=tuple(args.weights) if args.weights else None, device=args.device,
    )
    _, _, summary = postprocess_files(args.query, args.reference, args.train, args.out, cfg)
    print(format_summary(summary))
    return summary
