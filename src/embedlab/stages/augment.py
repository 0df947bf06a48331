"""Augment stage: one augmented training set per recipe (docs/originals/gem.md).

    embedlab augment --recipe bw                  # settings from params.yaml's augment section
    embedlab augment --recipe big --classes 100 --per-class 20 --size 256 --workers 8
    embedlab augment --recipe blur_bw --show      # print the recipe's effective steps, make nothing
    embedlab augment --recipe bw --preview bw.png # a picture of a few classes as the set holds them

Writes ``<augment.out>/<recipe>`` (see :mod:`embedlab.augment.generator` for
the layout). Everything is checked before the first image is written: the
recipes, the source folder, an existing output folder's parameters. A re-run
resumes; ``dvc repro`` passes ``--if-stale restart`` so that a parameter
change regenerates the set while a killed run still resumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from embedlab.augment.generator import GenerateSettings, generate, generated_set_classes
from embedlab.augment.recipes import Recipe, format_recipe, get_recipe, load_recipes
from embedlab.config import AugmentConfig, Params, apply_overrides
from embedlab.data.shards import SHARD_SIZE
from embedlab.images import list_images


POOL_MAX = 10_000  # the original drew its overlay images from 10k images


def overlay_sources(source: str | Path, limit: int = POOL_MAX) -> list[str]:
    """The other images of underlay / overlay / opacity steps: the source
    images, at most ``limit`` of them, evenly spaced in name order."""
    paths = list_images(source)
    return [str(p) for p in paths[:: max(1, -(-len(paths) // limit))]]


def plan_recipe(cfg: AugmentConfig, name: str, params_file: str = "params.yaml") -> Recipe:
    """Recipe ``name`` resolved at ``cfg.size``; every recipe is checked first."""
    recipes = load_recipes(cfg.base, cfg.recipes, cfg.size, where=f"{params_file}: augment")
    return get_recipe(recipes, name, where=f"{params_file}: augment")


def show_recipe(params: Params, name: str, overrides: dict[str, Any] | None = None,
                params_file: str = "params.yaml") -> str:
    cfg = apply_overrides(params.augment, overrides or {}, "augment")
    return format_recipe(plan_recipe(cfg, name, params_file))


def _plan(params: Params, name: str, overrides: dict[str, Any] | None, params_file: str):
    """What a set of recipe ``name`` is made of: (config, recipe, source classes, overlay pool paths, settings)."""
    cfg = apply_overrides(params.augment, overrides or {}, "augment")
    recipe = plan_recipe(cfg, name, params_file)
    classes = generated_set_classes(cfg.source, cfg.every, cfg.classes, cfg.faces if recipe.faces else None)
    settings = GenerateSettings(per_class=cfg.per_class, jpeg_quality=cfg.jpeg_quality, seed=cfg.seed,
                                on_bad_image=cfg.on_bad_image)
    return cfg, recipe, classes, overlay_sources(cfg.source), settings


def preview_augment(params: Params, name: str, out: str | Path, overrides: dict[str, Any] | None = None,
                    params_file: str = "params.yaml") -> Path:
    """The preview picture of recipe ``name``: a few classes as the set would hold them (nothing else written)."""
    from embedlab.augment.pool import OverlayPool
    from embedlab.augment.preview import write_recipe_preview

    _, recipe, classes, pool, settings = _plan(params, name, overrides, params_file)
    return write_recipe_preview(recipe, classes, settings, OverlayPool(pool, max_side=recipe.size), out)


def run_augment(params: Params, name: str, overrides: dict[str, Any] | None = None, out: str | Path | None = None,
                restart: bool = False, if_stale: str = "fail", progress: bool = True,
                params_file: str = "params.yaml", shard_size: int = SHARD_SIZE) -> tuple[dict[str, Any], Path]:
    """Generate the set of recipe ``name``; return its manifest and folder.

    ``overrides`` are AugmentConfig fields (None values ignored), e.g. from the CLI.
    """
    cfg, recipe, classes, pool, settings = _plan(params, name, overrides, params_file)
    folder = Path(out) if out else Path(cfg.out) / name
    # The recipe steps are in the manifest already; out is where, not what.
    shaping = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "base", "recipes")}
    workers = params.runtime.augment_workers
    manifest = generate(recipe, classes, folder, settings, pool, workers=workers, restart=restart,
                        if_stale=if_stale, progress=progress, extra=shaping, shard_size=shard_size)
    return manifest, folder

