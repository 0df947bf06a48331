"""The W matrix of a drip step: its ArcFace kernel set to class centroids of the current model.

Computed when training starts (:class:`CentroidInit`), after DDP has given
every rank rank 0's weights: each rank embeds its share of the classes'
views and the centroid sums are reduced across ranks, so N GPUs take 1/N of
the 7.5M forward passes of a 1.5M-class step. A computed matrix is saved
beside the run and in a cache keyed by what it was computed from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pytorch_lightning as pl
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from embedlab.atomic import atomic_path, share_file
from embedlab.config import DripConfig, Params
from embedlab.const import W_MATRIX
from embedlab.data.drip import ClassImages, QueryViews, ReferenceViews
from embedlab.descriptor_chunks import images_digest, weights_digest
from embedlab.devices import autocast_dtype, loader_workers, torch_device
from embedlab.models.centroids import class_centroids
from embedlab.models.drip_module import DripModule

W_MATRIX_CACHE = "w_matrix_cache"  # beside the runs' folder: W matrices by what they were computed from


def w_matrix_key(module: DripModule, images: ClassImages, cfg: DripConfig, params: Params) -> str:
    """What a W matrix is computed from: the model's weights, the class images in order, the views (size,
    augmented copies and, when there are any, their intensity), the seed of their draws and the precision."""
    parts = [weights_digest(module.model), images_digest(images.paths), cfg.img_size, cfg.w_matrix_augmentations,
             cfg.qry_augs_intensity if cfg.w_matrix_augmentations else None, params.seed,
             str(autocast_dtype(params.runtime.precision, torch_device(params.runtime.device)))]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def view_titles(augmentations: int) -> list[str]:
    """What each view's bar embeds, in the views' order: the reference view, then each augmentation."""
    return ["reference view"] + [f"augmentation {a}/{augmentations}" for a in range(1, augmentations + 1)]


def _on_rank_zero(value):
    """Rank 0's ``value`` on every rank: all ranks must take the same branch (compute or load) together."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init_w_matrix(module: DripModule, out_dir: Path, models_root: Path, images: ClassImages, augment,
                  cfg: DripConfig, params: Params, rank: int = 0, ranks: int = 1) -> Path:
    """Set the ArcFace kernel to class centroids of the current model; returns the saved W matrix.

    At 1M+ classes a W matrix is hours of work, so it is computed once: a
    run reuses the one saved by an interrupted run of the same settings, or
    one another run computed from the same model, classes and views (a sweep's
    trials that tune the learning rate or the margin share one; kept in
    ``<models_root>/../w_matrix_cache``). Under DDP (``ranks`` > 1, every rank
    calling) each rank embeds its block of every view; rank 0 writes the files.
    """
    path = out_dir / W_MATRIX
    cached = models_root.parent / W_MATRIX_CACHE / f"{w_matrix_key(module, images, cfg, params)}.safetensors"
    if rank == 0 and not path.is_file() and cached.is_file():
        share_file(cached, path)
    if _on_rank_zero(path.is_file()):
        module.head.load_centroids(load_file(str(path))["w"])
        return path
    views = [ReferenceViews(images, cfg.img_size)] + [
        QueryViews(images, augment, cfg.img_size, params.seed, stream=1 + a) for a in range(cfg.w_matrix_augmentations)
    ]
    home = next(module.model.parameters()).device  # training's device: the model goes back there
    device = home if home.type != "cpu" else torch_device(params.runtime.device)
    # Inference: the embedding batch size and precision, not training's (7.5M forward passes at 1.5M classes).
    w = class_centroids(module.model, views, len(images), params.runtime.inference_batch_size,
                        loader_workers(params.runtime.num_workers, device, processes=ranks), device,
                        autocast_dtype(params.runtime.precision, device), rank=rank, ranks=ranks,
                        titles=view_titles(cfg.w_matrix_augmentations))
    module.model.to(home)
    module.head.load_centroids(w)
    if rank == 0:
        with atomic_path(path) as tmp:
            save_file({"w": w}, str(tmp))
        share_file(path, cached)
    return path


class CentroidInit(pl.Callback):
    """Loads (or computes, on every rank) the W matrix when a step starts; a resumed run's checkpoint holds its
    kernel already. Rank 0 logs the matrix as an MLflow artifact."""

    def __init__(self, request, params: Params) -> None:
        self.request, self.params = request, params

    def on_fit_start(self, trainer: pl.Trainer, module: DripModule) -> None:
        if trainer.ckpt_path:
            return
        request = self.request
        path = init_w_matrix(module, request.out_dir, request.models_root, request.images, request.augment,
                             request.cfg, self.params, rank=trainer.global_rank, ranks=trainer.world_size)
        if trainer.is_global_zero and mlflow.active_run():
            mlflow.log_artifact(str(path), "w_matrix")
