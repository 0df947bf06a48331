"""The drip schedule's starting point: the backbone weights its first step loads.

    embedlab init-weights        # writes models/drip/pretrained/backbone.safetensors

It converts ``drip.pretrained`` (a local weights file, or weights shipped in a
pip package) into the backbone's own key names, or, without one, writes a
seeded random initialisation. As a DVC stage it makes the first step's
starting point an explicit, versioned dependency.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from embedlab import tracking
from embedlab.atomic import atomic_path, write_json_atomic
from embedlab.config import Params
from embedlab.models.backbone import create_backbone
from embedlab.models.pretrained import load_backbone_weights

INIT_STEP = "pretrained"  # the name steps use in ``init_from`` for this starting point


def initial_weights_path(models_root: Path = Path("models/drip")) -> Path:
    return models_root / INIT_STEP / "backbone.safetensors"


def write_initial_weights(params: Params, models_root: Path = Path("models/drip")) -> dict:
    cfg = params.drip
    torch.manual_seed(params.seed)
    body = create_backbone(cfg.backbone, num_classes=0, global_pool="")
    if cfg.pretrained:
        load_backbone_weights(body, cfg.pretrained)
    path = initial_weights_path(models_root)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in body.state_dict().items()}, str(tmp))
    info = {"backbone": cfg.backbone, "source": cfg.pretrained or f"random init (seed {params.seed})",
            "tensors": len(body.state_dict())}
    write_json_atomic(path.with_suffix(".json"), info)
    with tracking.stage_run("drip_init", "drip/init-weights", params.tracking.experiment, params.tracking.uri):
        tracking.log_params({"drip.backbone": cfg.backbone, "drip.pretrained": cfg.pretrained, "seed": params.seed})
        tracking.log_artifacts_if_present({"init": path.parent})
    return {"out": str(path), **info}
