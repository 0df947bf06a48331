"""The one line a stage prints when it ends: its headline numbers and the file that holds all of them.

A stage's whole summary (every score before and after training, post-processed, per kind, the counts) is in the
files it writes already: ``reports/<stage>/.../metrics.json`` (DVC's metrics, ``embedlab report``'s tables), a
data set's manifest. The terminal gets one line per stage, e.g.::

    drip/s1: 16 classes, 2 epochs, train loss 7.260, val loss 7.978, μAP 0.1768 -> 0.2791 (post-processed 0.1318);
    all: reports/drip/s1/metrics.json

(one line, folded here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def _n(value: Any, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def _change(summary: Mapping[str, Any], key: str, fmt: str = "{:.4f}") -> str:
    """``before -> after`` of a score the lifecycle reports both of (``before_<key>``, ``<key>``), else after."""
    after = _n(summary.get(key), fmt)
    return f"{_n(summary[f'before_{key}'], fmt)} -> {after}" if f"before_{key}" in summary else after


def _training(summary: Mapping[str, Any]) -> list[str]:
    parts = [f"{summary['n_classes']} classes"] if "n_classes" in summary else []
    parts.append(f"{summary.get('epochs')} epoch{'' if summary.get('epochs') == 1 else 's'}")
    parts.append(f"train loss {_n(summary.get('train_loss'), '{:.3f}')}")
    if summary.get("val_loss") is not None:
        parts.append(f"val loss {_n(summary['val_loss'], '{:.3f}')}")
    return parts


def _skipped(summary: Mapping[str, Any]) -> list[str]:
    n = sum(int(summary.get(k) or 0) for k in ("skipped_training_images", "skipped_images"))
    return [f"{n} unreadable image{'' if n == 1 else 's'} skipped"] if n else []


def _line(name: str, parts: list[str], full: str | Path | None) -> str:
    return f"{name}: {', '.join(parts)}" + (f"; all: {full}" if full else "")


def retrieval_line(name: str, summary: Mapping[str, Any], full: str | Path | None) -> str:
    """drip, GeM, the ensemble, the baseline: μAP (before -> after training), post-processed and neck μAP."""
    parts = _training(summary) if "epochs" in summary else []
    extra = [f"post-processed {_n(summary['post_uAP'])}"] if "post_uAP" in summary else []
    if "neck_uAP" in summary:
        extra.append(f"neck {_n(summary['neck_uAP'])}")
    parts.append(f"μAP {_change(summary, 'uAP')}" + (f" ({'; '.join(extra)})" if extra else ""))
    if "epochs" not in summary:
        parts.append(f"recall at P90 {_n(summary.get('recall_at_p90'))}")
    if summary.get("advance_rule_met") == 0.0:
        parts.append("advance rule not met")
    return _line(name, parts + _skipped(summary), full)


def triplet_line(name: str, summary: Mapping[str, Any], full: str | Path | None) -> str:
    parts = [f"miner {summary.get('miner')}", *_training(summary), f"valid EER {_change(summary, 'valid_eer')}"]
    if "test_eer" in summary:
        parts.append(f"test EER {_change(summary, 'test_eer')}")
    return _line(name, parts, full)


def decoder_line(name: str, summary: Mapping[str, Any], full: str | Path | None) -> str:
    parts = [*_training(summary), f"template cosine {_change(summary, 'cosine_mean')}",
             f"above threshold {_change(summary, 'above_threshold', '{:.1%}')}",
             f"PSNR {_change(summary, 'psnr_mean', '{:.2f}')} dB", f"SSIM {_change(summary, 'ssim_mean', '{:.3f}')}"]
    return _line(name, parts, full)


def robustness_line(scores: Mapping[str, Mapping[str, float]], full: str | Path | None) -> str:
    """μAP of each member over all edit kinds (the file has them per kind)."""
    return _line("robustness", ["μAP over all edits: " + ", ".join(
        f"{member} {_n(by_kind.get('all'))}" for member, by_kind in scores.items())], full)


def robustness_set_line(summary: Mapping[str, Any], out: str | Path, full: str | Path) -> str:
    return _line("robustness-set", [f"{summary['queries']} queries ({len(summary['edits'])} edit kinds, "
                                    f"{summary['distractors']} distractors) -> {out}"], full)


def face_data_line(summary: Mapping[str, Any], full: str | Path) -> str:
    persons, pairs = summary.get("persons", {}), summary.get("pairs", {})
    parts = [f"{summary['n_train_labels']} train + {summary['n_valid_labels']} valid labels "
             f"({persons.get('train')} + {persons.get('valid')} persons)",
             f"{sum(pairs.values())} validation pairs -> {summary['out']}"]  # its log says what it dropped
    return _line("face-data", parts, full)


def templates_line(summary: Mapping[str, Any], full: str | Path) -> str:
    splits = summary.get("splits", {})
    counts = " + ".join(f"{s['photos']} {name}" for name, s in splits.items())
    persons = " + ".join(str(s["persons"]) for s in splits.values())
    parts = [f"{counts} photos ({persons} persons)", f"{summary['template_dim']}-d templates of "
             f"{summary['template_model']}"]
    if summary.get("skipped_photos"):
        parts.append(f"{summary['skipped_photos']} unreadable photos skipped")
    return _line("templates", parts, full)


def init_weights_line(summary: Mapping[str, Any]) -> str:
    return _line("init-weights", [f"{summary['backbone']} from {summary['source']}, {summary['tensors']} tensors "
                                  f"-> {summary['out']}"], None)


def drip_cache_line(summary: Mapping[str, Mapping[str, Any]], cache: str | Path) -> str:
    images = sum(s["images"] for s in summary.values())
    sizes = sorted({s["size"] for s in summary.values()})
    parts = [f"{images} images at {'/'.join(map(str, sizes))} px ("
             + ", ".join(f"{name} {s['images']}" for name, s in summary.items()) + f") -> {cache}"]
    skipped = sum(len(s.get("skipped") or ()) for s in summary.values())
    if skipped:
        parts.append(f"{skipped} unreadable images skipped")
    return _line("drip-cache", parts, None)


def augment_line(manifest: Mapping[str, Any], out: str | Path, full: str | Path) -> str:
    """augment's one line (the manifest lists every skipped input)."""
    c, run, p = manifest["counts"], manifest["run"], manifest["parameters"]
    parts = [f"{c['classes']} classes x {p['per_class']} images of {p['size']} px -> {out}",
             f"written {c['images_written']}, already present {c['images_present']}",
             f"{run['workers']} worker(s), {run['seconds']:.1f} s, {run['images_per_second'] or 0:.0f} images/s"
             + (", resumed" if run.get("resumed") else "")]
    if c["skipped_inputs"]:
        parts.append(f"{c['skipped_inputs']} unreadable inputs skipped")
    return _line(f"augment {manifest['recipe']}", parts, full)


def code_deps_line(paths: list[Path], out: str | Path) -> str:
    return _line("code-deps", [f"the code files of {len(paths)} stages -> {out}"], None)
