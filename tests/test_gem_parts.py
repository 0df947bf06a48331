"""The GeM trainer's parts: network, sharded classifier, losses, P×K sampler, LR schedule."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from embedlab.data.samplers import PKSampler
from embedlab.models.gem_net import GemNet, GemNetSpec, Waveblock, set_last_stride_1
from embedlab.models.losses import gem_loss, hardest_pairs, soft_batch_hard_triplet
from embedlab.models.lr_schedule import WarmupFlatCosine, warmup_flat_cosine
from embedlab.models.sharded_classifier import (
    DistributedShardedCrossEntropy,
    ShardedLinear,
    exclude_shards_from_ddp,
    shard_offsets,
    shard_sizes,
)

TINY = GemNetSpec(backbone="test_resnet", img_size=64, proj_hidden=32, proj_dim=48)


# ---------------------------------------------------------------- GemNet

def test_gem_net_outputs_and_unit_descriptors():
    torch.manual_seed(0)
    net = GemNet(TINY)
    x = torch.randn(4, 3, 64, 64)
    gem, neck = net.train().features(x)
    assert gem.shape == (4, net.body.num_features) and gem.dtype == torch.float32
    assert neck.shape == (4, 48) and net.descriptor_dim == 48
    with torch.no_grad():
        descriptors = net.eval()(x)
        fast = net.use_channels_last()(x)
    assert descriptors.shape == (4, 48) and descriptors.dtype == torch.float32
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(descriptors, fast, atol=1e-5)


@pytest.mark.parametrize("backbone", ["test_resnet", "mobilenetv2_100"])
def test_last_stride_1_doubles_the_final_map(backbone):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        default = GemNet(GemNetSpec(backbone, proj_hidden=8, proj_dim=8, last_stride_1=False)).eval().body(x)
        stride_1 = GemNet(GemNetSpec(backbone, proj_hidden=8, proj_dim=8)).eval().body(x)
    assert default.shape[-2:] == (2, 2)
    assert stride_1.shape[-2:] == (4, 4) and stride_1.shape[1] == default.shape[1]


def test_set_last_stride_1_refuses_other_backbones():
    import timm

    with pytest.raises(ValueError, match="output_stride=16"):
        set_last_stride_1(timm.create_model("mobilenetv2_100", num_classes=0, global_pool=""))


def test_waveblock_masks_one_band_in_training_only():
    wave = Waveblock(ratio=0.3, gain=1.5)
    x = torch.ones(2, 3, 10, 4)
    torch.manual_seed(1)
    masked = wave.train()(x)
    rows = masked[0, 0, :, 0]
    kept = (rows == 1.0).nonzero().squeeze(1)
    assert len(kept) == 3 and (kept.diff() == 1).all()  # one band of round(0.3·10) rows
    assert ((rows == 1.0) | (rows == 1.5)).all()
    assert torch.equal(masked, rows[None, None, :, None].expand_as(x))  # same band for all samples and channels
    torch.manual_seed(1)
    assert torch.equal(wave(x), masked)  # torch's generator: seeded, reproducible
    assert torch.equal(wave.eval()(x), x)


@pytest.mark.slow
def test_gem_net_trains_compiled_as_one_graph_whatever_band_waveblock_draws():
    """runtime.compile: a Python band position would break the graph and recompile it per position."""
    from torch._dynamo.utils import counters

    from embedlab.models.compiled import compiled_trunk

    torch.manual_seed(0)
    net = GemNet(GemNetSpec(backbone="test_resnet", img_size=48, proj_hidden=32, proj_dim=64)).train()
    torch._dynamo.reset()
    counters.clear()
    with compiled_trunk(net, True):
        for _ in range(6):  # six bands drawn per Waveblock
            net(torch.randn(4, 3, 48, 48)).square().mean().backward()
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_waveblock_runs_after_the_middle_stages_and_keeps_the_weights_layout():
    torch.manual_seed(0)
    with_wave = GemNet(TINY)
    without = GemNet(dataclasses.replace(TINY, waveblock=False))
    without.load_state_dict(with_wave.state_dict())  # hooks, not wrappers: same keys
    assert len(with_wave.waveblocks) == 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(with_wave.eval()(x), without.eval()(x))
        assert not torch.allclose(with_wave.train().body(x), without.train().body(x))


def test_neck_bias_is_frozen_and_there_is_no_classifier():
    net = GemNet(TINY)
    assert not net.neck.bias.requires_grad
    gem, neck = net.train().features(torch.randn(4, 3, 64, 64))
    (gem.sum() + neck.pow(2).sum()).backward()
    assert net.neck.bias.grad is None and net.neck.weight.grad is not None
    prefixes = {key.split(".")[0] for key in net.state_dict()}
    assert prefixes == {"body", "pool", "projector", "neck"}
    assert not any(key.startswith(("body.fc", "body.head", "body.classifier")) for key in net.state_dict())
    assert GemNetSpec(**json.loads(json.dumps(dataclasses.asdict(TINY)))) == TINY
    assert dataclasses.asdict(TINY)["kind"] == "gem_net"


def test_pretrained_backbone_loads_by_name(tmp_path):
    torch.manual_seed(0)
    source = GemNet(TINY)
    torch.save(source.body.state_dict(), tmp_path / "body.pt")
    loaded = GemNet(TINY, pretrained=str(tmp_path / "body.pt"))
    assert all(torch.equal(a, b) for a, b in zip(source.body.state_dict().values(), loaded.body.state_dict().values()))


# ---------------------------------------------------------------- sharded classifier

def test_shard_sizes_for_any_class_count():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert shard_sizes(10, 4) == [3, 3, 2, 2]
    assert shard_sizes(8, 4) == [2, 2, 2, 2]
    assert shard_sizes(5, 5) == [1] * 5
    with pytest.raises(ValueError, match="at most one shard per class"):
        shard_sizes(3, 4)


@pytest.mark.parametrize("n_shards", [3, 4])
def test_sharded_linear_equals_one_linear(n_shards):
    torch.manual_seed(0)
    sharded = ShardedLinear(6, 10, n_shards)
    torch.manual_seed(0)
    assert torch.equal(sharded.full_weight(), nn.Linear(6, 10, bias=False).weight.detach())  # nn.Linear's init
    dense = nn.Linear(6, 10, bias=False)
    dense.weight.data.copy_(sharded.full_weight())
    features = torch.randn(8, 6)
    labels = torch.randint(0, 10, (8,))
    x1, x2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    logits = sharded(x1)
    assert torch.allclose(logits, dense(x2), atol=1e-6)
    loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
    reference = F.cross_entropy(dense(x2), labels, label_smoothing=0.1)
    loss.backward()
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    grads = torch.cat([shard.grad for shard in sharded.shards])
    assert torch.allclose(grads, dense.weight.grad, atol=1e-6)


def test_sharded_linear_on_a_device_list_keeps_its_shards_through_dtype_moves():
    sharded = ShardedLinear(4, 7, ["cpu", "cpu"]).to(torch.float64)
    assert [s.shape[0] for s in sharded.shards] == [4, 3]
    assert all(s.dtype == torch.float64 and s.device.type == "cpu" for s in sharded.shards)
    assert sharded(torch.randn(2, 4, dtype=torch.float64)).shape == (2, 7)


N_CLASSES, IN_DIM, FEAT_DIM, LOCAL_BATCH = 10, 6, 5, 4


def _reference(world: int):
    """The whole problem and its single-process, unsharded answer (same on every rank)."""
    torch.manual_seed(0)
    body = nn.Linear(IN_DIM, FEAT_DIM)
    weight = torch.randn(N_CLASSES, FEAT_DIM)
    inputs = torch.randn(world * LOCAL_BATCH, IN_DIM)
    labels = torch.randint(0, N_CLASSES, (world * LOCAL_BATCH,))
    reference_body = nn.Linear(IN_DIM, FEAT_DIM)
    reference_body.load_state_dict(body.state_dict())
    full = weight.clone().requires_grad_()
    loss = F.cross_entropy(reference_body(inputs) @ full.T, labels, label_smoothing=0.1)
    loss.backward()
    return body, weight, inputs, labels, loss.detach(), reference_body.weight.grad, full.grad


class _Net(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.head = head or DistributedShardedCrossEntropy(FEAT_DIM, N_CLASSES, label_smoothing=0.1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(inputs)


def _sharded_worker(rank: int, world: int, init_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        body, weight, inputs, labels, ref_loss, ref_body_grad, ref_weight_grad = _reference(world)
        net = _Net(body)
        net.head.load_full_weight(weight)
        assert exclude_shards_from_ddp(net) == ["head.weight"]
        ddp = nn.parallel.DistributedDataParallel(net)  # shards of unequal size: must be excluded
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        loss = net.head(ddp(inputs[rows]), labels[rows])
        loss.backward()
        start, size = net.head.shard_offset, net.head.weight.shape[0]
        assert size == shard_sizes(N_CLASSES, world)[rank]
        torch.testing.assert_close(loss.detach(), ref_loss)
        torch.testing.assert_close(net.head.weight.grad, ref_weight_grad[start:start + size])
        torch.testing.assert_close(net.body.weight.grad, ref_body_grad)  # after DDP's averaging
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_sharded_cross_entropy_equals_the_unsharded_loss(world, tmp_path):
    mp.spawn(_sharded_worker, args=(world, str(tmp_path / "rendezvous")), nprocs=world, join=True)


# ---------------------------------------------------------------- losses

def _brute_force_triplet(features: torch.Tensor, labels: list[int]) -> torch.Tensor:
    terms = []
    for a in range(len(labels)):
        d = [torch.sqrt(((features[a] - features[j]) ** 2).sum()) for j in range(len(labels))]
        pos = [d[j] for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        neg = [d[j] for j in range(len(labels)) if labels[j] != labels[a]]
        if pos and neg:
            terms.append(torch.log(1 + torch.exp(max(pos) - min(neg))))
    return torch.stack(terms).mean()


def test_soft_triplet_matches_a_brute_force_loop():
    torch.manual_seed(0)
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4]  # identity 4: no positive, skipped
    features = torch.randn(len(labels), 16)
    x1, x2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    loss = soft_batch_hard_triplet(x1, torch.tensor(labels))
    reference = _brute_force_triplet(x2, labels)
    loss.backward()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    anchors, _, _ = hardest_pairs(features, torch.tensor(labels))
    assert 11 not in anchors.tolist()


def test_soft_triplet_by_hand():
    # On a line: a0=0, a1=1 (label 0); b0=3, b1=7 (label 1).
    features = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap 1, d_an 3; anchor 1: 1, 2; anchor 2: 4, 2; anchor 3: 4, 6
    expected = sum(math.log1p(math.exp(dp - dn)) for dp, dn in [(1, 3), (1, 2), (4, 2), (4, 6)]) / 4
    assert soft_batch_hard_triplet(features, labels).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="no anchor"):
        soft_batch_hard_triplet(features, torch.tensor([0, 1, 2, 3]))


def test_gem_loss_weights_its_parts():
    torch.manual_seed(0)
    logits, gem = torch.randn(8, 5), torch.randn(8, 16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    total, parts = gem_loss(logits, labels, gem)
    ce = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert parts["ce"].item() == pytest.approx(ce.item())
    assert parts["triplet"].item() == pytest.approx(soft_batch_hard_triplet(gem, labels).item())
    assert total.item() == pytest.approx(10 * ce.item() + parts["triplet"].item(), rel=1e-6)


# ---------------------------------------------------------------- P×K sampler

LABELS = [i // 5 for i in range(40)] + [8, 9, 9]  # 8 identities × 5 images; identity 8 has 1, 9 has 2


def _batches(sampler: PKSampler) -> list[list[int]]:
    indices = list(sampler)
    assert len(indices) == len(sampler)
    return [indices[i:i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def test_pk_batches_hold_p_identities_times_k():
    sampler = PKSampler(LABELS, p=4, k=3, seed=0)
    assert len(sampler) == 3 * 12  # ceil(10 identities / 4) batches
    seen = set()
    for batch in _batches(sampler):
        counts = Counter(LABELS[i] for i in batch)
        assert len(counts) == 4 and set(counts.values()) == {3}
        seen |= set(counts)
    assert seen == set(range(10))  # every identity once, small ones with replacement


def test_pk_sampler_is_reproducible_per_epoch():
    a, b = PKSampler(LABELS, 4, 3, seed=7, length=20), PKSampler(LABELS, 4, 3, seed=7, length=20)
    assert len(a) == 20 * 12
    first = list(a)
    assert list(b) == first
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PKSampler(LABELS, 4, 3, seed=8, length=20)) != first


def test_pk_sampler_ranks_share_out_one_draw():
    whole = _batches(PKSampler(LABELS, 2, 2, seed=3, length=6))
    ranks = [_batches(PKSampler(LABELS, 2, 2, seed=3, length=3, num_replicas=2, rank=r)) for r in range(2)]
    assert ranks[0] == whole[0::2] and ranks[1] == whole[1::2]


def test_pk_sampler_needs_two_identities():
    with pytest.raises(ValueError, match="at least 2"):
        PKSampler([3, 3, 3], p=1, k=2, seed=0)
    with pytest.raises(ValueError, match="only 10"):
        PKSampler(LABELS, p=11, k=2, seed=0)


# ---------------------------------------------------------------- LR schedule

def test_warmup_flat_cosine_shape():
    f = lambda t: warmup_flat_cosine(t, warmup=5, flat=5, total=25)  # noqa: E731
    assert f(0) == pytest.approx(0.01)
    assert f(2.5) == pytest.approx(0.505)
    assert f(5) == f(7) == f(9.99) == f(10) == 1.0
    assert f(17.5) == pytest.approx(0.5)
    assert f(25) == f(30) == 0.0
    decay = [f(t) for t in range(10, 26)]
    assert all(x > y for x, y in zip(decay, decay[1:]))
    assert warmup_flat_cosine(25, 5, 5, 25, final_factor=0.05) == pytest.approx(0.05)


def test_warmup_flat_cosine_per_step_in_lambda_lr():
    schedule = WarmupFlatCosine(warmup=5, flat=5, total=25, steps_per_epoch=10)
    assert schedule(25) == pytest.approx(warmup_flat_cosine(2.5, 5, 5, 25))
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=3.5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for _ in range(175):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3.5e-4 * 0.5)
    assert scheduler.state_dict()["lr_lambdas"][0]["steps_per_epoch"] == 10


def test_a_gem_checkpoint_holds_the_classifier_and_its_optimizer_state_whole_for_any_sharding():
    """Saved from one classifier shard, loaded into three (another device or rank count): the weights and Adam's
    moments land on the same classes, and the optimizer loads them (before this, it refused another layout)."""
    from embedlab.models.gem_module import GemModule

    def module(shards: int) -> GemModule:
        torch.manual_seed(0)
        gem = GemModule(dataclasses.asdict(TINY), n_classes=7, iters_per_epoch=4)
        gem.classifier = ShardedLinear(TINY.proj_dim, 7, shards)
        return gem

    one = module(1)
    optimizer = one.configure_optimizers()["optimizer"]
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 0, 5, 5])
    for _ in range(2):
        optimizer.zero_grad()
        gem_feature, neck = one.model.features(images)
        gem_loss(one.classifier(neck), labels, gem_feature, 10.0, 1.0, 0.1)[0].backward()
        optimizer.step()
    checkpoint = {"state_dict": one.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    moments = optimizer.state[one.classifier.shards[0]]["exp_avg"].clone()
    one.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"]["classifier.weight"].shape == (7, TINY.proj_dim)

    three = module(3)
    three.on_load_checkpoint(checkpoint)
    three.load_state_dict(checkpoint["state_dict"])
    resumed = three.configure_optimizers()["optimizer"]
    resumed.load_state_dict(checkpoint["optimizer_states"][0])
    assert torch.equal(three.classifier.full_weight(), one.classifier.full_weight())
    assert torch.equal(torch.cat([resumed.state[s]["exp_avg"] for s in three.classifier.shards]), moments)
    assert int(resumed.state[three.classifier.shards[2]]["step"]) == 2


# ---------------------------------------------------------------- the ArcFace head split over ranks

EMBED_DIM, ARC_CLASSES = 6, 10  # 10 classes on 3 ranks: 4 + 3 + 3


def _arcface_reference(world: int):
    from embedlab.models.arcface import ArcFaceHead

    torch.manual_seed(1)
    body = nn.Linear(IN_DIM, EMBED_DIM)
    head = ArcFaceHead(EMBED_DIM, ARC_CLASSES, m=0.3, s=20.0)
    inputs = torch.randn(world * LOCAL_BATCH, IN_DIM)
    labels = torch.randint(0, ARC_CLASSES, (world * LOCAL_BATCH,))
    reference_body = nn.Linear(IN_DIM, EMBED_DIM)
    reference_body.load_state_dict(body.state_dict())
    loss = F.cross_entropy(head(reference_body(inputs), labels, m=0.2), labels)
    loss.backward()
    return body, head.weight.detach().clone(), inputs, labels, loss.detach(), reference_body.weight.grad, \
        head.weight.grad


def _arcface_worker(rank: int, world: int, init_file: str) -> None:
    import torch.distributed as dist

    from embedlab.models.sharded_classifier import DistributedArcFace

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        body, kernel, inputs, labels, ref_loss, ref_body_grad, ref_kernel_grad = _arcface_reference(world)
        net = _Net(body, DistributedArcFace(EMBED_DIM, ARC_CLASSES, m=0.3, s=20.0))
        net.head.load_full_weight(kernel)
        assert exclude_shards_from_ddp(net) == ["head.weight"]
        ddp = nn.parallel.DistributedDataParallel(net)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        loss = net.head(ddp(inputs[rows]), labels[rows], m=0.2)
        loss.backward()
        start, size = net.head.shard_offset, net.head.n_local
        assert size == shard_sizes(ARC_CLASSES, world)[rank]
        torch.testing.assert_close(loss.detach(), ref_loss)
        torch.testing.assert_close(net.head.weight.grad, ref_kernel_grad[:, start:start + size])
        torch.testing.assert_close(net.body.weight.grad, ref_body_grad)  # after DDP's averaging
        with torch.no_grad():  # the nearest centre over every rank's block: the unsplit head's argmax
            nearest = (F.normalize(body(inputs), dim=1) @ F.normalize(kernel, dim=0)).argmax(dim=1)
            assert torch.equal(net.head.predict(body(inputs[rows])), nearest[rows])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_arcface_split_over_ranks_gives_the_unsplit_loss_and_gradients(world, tmp_path):
    """Each rank holds a block of the kernel's classes (10 on 3 ranks: 4 + 3 + 3); the margin goes on the rank
    that owns the target class; loss and gradients equal one ArcFaceHead over the global batch."""
    mp.spawn(_arcface_worker, args=(world, str(tmp_path / "rendezvous")), nprocs=world, join=True)


def _partial_fc_worker(rank: int, world: int, init_file: str) -> None:
    """Partial FC on split ranks: each rank samples its own block's columns; the loss is the CE over the union."""
    import torch.distributed as dist

    from embedlab.models.arcface import arcface_logits, columns_of, sample_class_columns
    from embedlab.models.sharded_classifier import DistributedArcFace

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        body, kernel, inputs, labels, *_ = _arcface_reference(world)
        head = DistributedArcFace(EMBED_DIM, ARC_CLASSES, m=0.3, s=20.0, sample_rate=0.5)
        head.load_full_weight(kernel)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        with torch.no_grad():
            loss = head(body(inputs[rows]), labels[rows], m=0.2)
        # Every rank's draw, as its head makes it (its generator: the seed offset by its first class).
        sizes, union = shard_sizes(ARC_CLASSES, world), []
        for r, first in enumerate(shard_offsets(sizes)):
            own = labels - first
            positives = own[(own >= 0) & (own < sizes[r])].unique()
            columns = sample_class_columns(positives, sizes[r], 0.5, torch.Generator().manual_seed(1 + first))
            assert len(columns) == max(len(positives), -(-sizes[r] // 2)) and set(positives.tolist()) <= set(
                columns.tolist())
            union.append(first + columns)
        union = torch.cat(union)
        with torch.no_grad():
            cosine = F.normalize(body(inputs), dim=1) @ F.normalize(kernel[:, union], dim=0)
        sampled = columns_of(labels, union, ARC_CLASSES)
        torch.testing.assert_close(loss, F.cross_entropy(arcface_logits(cosine, sampled, 0.2, 20.0), sampled))
    finally:
        dist.destroy_process_group()


def test_partial_fc_over_split_ranks_is_the_ce_over_the_sampled_class_centres(tmp_path):
    mp.spawn(_partial_fc_worker, args=(3, str(tmp_path / "rendezvous")), nprocs=3, join=True)


def test_partial_fc_in_one_process_samples_in_training_and_scores_every_class_in_evaluation():
    from embedlab.models.arcface import ArcFaceHead

    torch.manual_seed(0)
    head = ArcFaceHead(EMBED_DIM, 40, m=0.3, s=20.0, sample_rate=0.25)
    embeddings, labels = torch.randn(6, EMBED_DIM), torch.tensor([0, 3, 3, 17, 39, 5])
    head.loss(embeddings, labels).backward()
    touched = (head.weight.grad.abs().sum(0) > 0).nonzero().squeeze(1)
    assert len(touched) == 10 and set(labels.tolist()) <= set(touched.tolist())  # ⌈0.25 · 40⌉ centres, the batch's
    head.eval()
    full = F.cross_entropy(head(embeddings, labels), labels)
    torch.testing.assert_close(head.loss(embeddings, labels), full)


def test_the_reid_transform_flips_pads_and_crops_the_same_way_for_the_same_draw(tiny_demo):
    from torch.utils.data import DataLoader

    from embedlab.data.collate import collate_skipping_bad
    from embedlab.data.labelled import LabelledImages
    from embedlab.data.transforms import reid_train_transform, resize_square
    from embedlab.images import list_images, load_rgb

    photo = load_rgb(list_images(tiny_demo / "disc" / "training")[0])
    outs = [reid_train_transform(photo, np.random.default_rng([0, draw]), 48) for draw in range(8)]
    assert {o.size for o in outs} == {(48, 48)}
    plain = np.asarray(resize_square(photo, 48))
    assert sum(not np.array_equal(np.asarray(o), plain) for o in outs) >= 6  # shifted or flipped
    assert np.array_equal(np.asarray(outs[3]), np.asarray(reid_train_transform(photo, np.random.default_rng([0, 3]),
                                                                                48)))

    rows = [(p, i // 2) for i, p in enumerate(list_images(tiny_demo / "disc" / "training")[:8])]
    data = LabelledImages(rows, 48, train_transform=reid_train_transform, seed=5)
    sampler = PKSampler(data.labels, 2, 2, seed=0, length=2, draws=True)
    items = list(sampler)
    assert [draw for draw, _ in items] == list(range(8))  # each draw numbered once per epoch
    batches = [[b[0] for b in DataLoader(data, batch_size=4, sampler=sampler, collate_fn=collate_skipping_bad,
                                         num_workers=workers)] for workers in (0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(*batches))  # the worker count changes nothing


def test_the_classifier_starts_as_the_original_or_as_nn_linear():
    torch.manual_seed(0)
    normal = ShardedLinear(64, 4000, 2, init="normal").full_weight()
    assert abs(normal.std().item() - 0.001) < 1e-4 and abs(normal.mean().item()) < 1e-4
    uniform = ShardedLinear(64, 4000, 2, init="uniform").full_weight()
    assert uniform.abs().max().item() <= 1 / 8 and uniform.std().item() > 0.05  # U(±1/√64)
    with pytest.raises(ValueError, match="classifier init must be one of"):
        ShardedLinear(64, 10, 1, init="zeros")


# ---------------------------------------------------------------- descriptor-track head (distilled)

def test_the_descriptor_track_head_gives_a_small_unit_descriptor_that_exports_and_loads(tmp_path):
    from embedlab.models.checkpoints import export_descriptor_model, load_descriptor_model

    torch.manual_seed(0)
    spec = dataclasses.replace(TINY, descriptor_dim=16)
    net = GemNet(spec).eval()
    assert [type(m) for m in net.descriptor_head] == [nn.BatchNorm1d, nn.LeakyReLU, nn.Linear, nn.BatchNorm1d]
    assert net.descriptor_head[2].in_features == 48 and net.descriptor_dim == 16
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        descriptors = net(x)
    assert descriptors.shape == (3, 16)
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(3), atol=1e-5)
    loaded = load_descriptor_model(export_descriptor_model(net, tmp_path / "model.safetensors")).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), descriptors, atol=1e-6)
    assert GemNet(TINY).descriptor_head is None and GemNet(TINY).descriptor_dim == 48


def test_similarity_distillation_by_hand_at_temperature_two():
    """KL(teacher ‖ student) of each sample's softmax over its similarities to the others (× scale / T), × T²."""
    from embedlab.models.losses import similarity_distillation

    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 4)), rng.normal(size=(5, 6))
    t, scale = 2.0, 20.0

    def rows(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        out = []
        for i in range(len(x)):
            logits = np.array([x[i] @ x[j] for j in range(len(x)) if j != i]) * scale / t
            e = np.exp(logits - logits.max())
            out.append(e / e.sum())
        return out

    expected = np.mean([np.sum(p * np.log(p / q)) for p, q in zip(rows(teacher), rows(student))]) * t * t
    got = similarity_distillation(torch.tensor(student), torch.tensor(teacher), temperature=t, scale=scale)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    same = torch.tensor(teacher)
    assert similarity_distillation(same, same).item() == pytest.approx(0.0, abs=1e-6)


def test_the_distilled_head_trains_without_changing_the_neck_model():
    """One step with the head and one without, from the same weights and batch: the 8192-d model (body,
    projector, neck) ends identical, and the head's weights moved."""
    from embedlab.models.gem_module import GemModule

    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 0, 5, 5])

    def module(descriptor_dim: int) -> GemModule:
        torch.manual_seed(0)
        return GemModule(dataclasses.asdict(dataclasses.replace(TINY, waveblock=False,
                                                                descriptor_dim=descriptor_dim)),
                         n_classes=7, iters_per_epoch=4)

    def step(gem: GemModule) -> None:
        optimizer = gem.configure_optimizers()["optimizer"]
        optimizer.zero_grad()
        gem.training_step((images, labels), 0).backward()
        optimizer.step()

    without, with_head = module(0), module(16)
    with_head.load_state_dict(without.state_dict(), strict=False)  # the same start but for the head
    head_before = with_head.model.descriptor_head[2].weight.detach().clone()
    step(without)
    step(with_head)
    plain = without.state_dict()
    shared = {k: v for k, v in with_head.state_dict().items() if not k.startswith("model.descriptor_head")}
    assert shared.keys() == plain.keys()
    assert [k for k, v in shared.items() if not torch.equal(v, plain[k])] == []
    assert not torch.equal(head_before, with_head.model.descriptor_head[2].weight)


def test_the_pretrained_body_and_the_fresh_layers_have_learning_rates_of_their_own():
    from embedlab.models.gem_module import GemModule

    gem = GemModule(dataclasses.asdict(dataclasses.replace(TINY, descriptor_dim=16)), n_classes=7, iters_per_epoch=4,
                    lr=1e-4, head_lr_mult=10.0)
    body_group, fresh_group = gem.configure_optimizers()["optimizer"].param_groups
    # (the warm-up schedule scales both alike from their initial rates)
    assert body_group["initial_lr"] == pytest.approx(1e-4) and fresh_group["initial_lr"] == pytest.approx(1e-3)
    body = {id(p) for p in gem.model.body.parameters()}
    assert {id(p) for p in body_group["params"]} == body
    fresh = {id(p) for p in fresh_group["params"]}
    for part in (gem.model.projector, gem.model.descriptor_head, gem.classifier):
        assert {id(p) for p in part.parameters()} <= fresh
    assert id(gem.model.neck.bias) not in fresh | body  # frozen, as the original's BNNeck
