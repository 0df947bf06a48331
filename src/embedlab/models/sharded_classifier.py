"""A bias-free classifier too big for one device, split row-wise into shards.

The GeM trainer (docs/originals/gem.md) classifies 8192-d features into 100k
classes (800M weights). The original split the classifier into 4 chunks on 4
GPUs and needed a class count divisible by 4; here any count works
(``shard_sizes``: sizes differ by at most one).

Two ways to shard:

* ``ShardedLinear``: model parallel in one process. Shard i is a Parameter
  on ``devices[i]``; features go to each shard's device, partial logits come
  back and are concatenated on the features' device, so the usual
  ``F.cross_entropy`` applies. Given a device list, the shards stay on their
  devices when the module is moved (``.to``/``.cuda`` only change their
  dtype), so a Lightning single-device run keeps them spread.
* ``DistributedShardedCrossEntropy``: DDP, one shard per rank. Features (with
  gradient) and labels are all-gathered, each rank computes the logits of its own classes
  for the whole global batch, and ``sharded_cross_entropy`` computes the exact
  (label-smoothed) cross-entropy from all-reduced maxima and sums, never
  materialising the full logits anywhere. The shard must stay out of DDP's
  gradient averaging: ``exclude_shards_from_ddp(model)`` before wrapping.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from embedlab.models.arcface import add_margin, columns_of, fp32_cosine, sample_class_columns


def shard_sizes(n_classes: int, n_shards: int) -> list[int]:
    """Row counts of ``n_shards`` shards of ``n_classes`` rows: the first ``n_classes % n_shards`` get one more."""
    if n_shards < 1 or n_classes < 1:
        raise ValueError(f"need at least one class and one shard, got {n_classes} classes, {n_shards} shards")
    if n_shards > n_classes:
        raise ValueError(f"{n_shards} shards for {n_classes} classes: at most one shard per class")
    base, extra = divmod(n_classes, n_shards)
    return [base + 1] * extra + [base] * (n_shards - extra)


def shard_offsets(sizes: list[int]) -> list[int]:
    """First class of each shard."""
    return [sum(sizes[:i]) for i in range(len(sizes))]


CLASSIFIER_INITS = ("normal", "uniform")
NORMAL_INIT_STD = 0.001  # the GeM original's classifier init


def linear_init_(weight: torch.Tensor, in_features: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """nn.Linear's default weight init (kaiming uniform, a=√5: U(±1/√in)), in place, for any row block."""
    bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
    with torch.no_grad():
        return weight.uniform_(-bound, bound, generator=generator)


class ShardedLinear(nn.Module):
    """Bias-free ``Linear(in_features, n_classes)`` with the weight split row-wise over devices.

    ``devices``: a list (shard i on ``devices[i]``, kept there when the module
    is moved) or a shard count (all shards on the CPU, moved with the module).
    """

    def __init__(self, in_features: int, n_classes: int, devices: list[torch.device | str] | int,
                 init: str = "uniform") -> None:
        """``init``: "uniform" (nn.Linear's draws) or "normal" (N(0, 0.001²), the GeM original's)."""
        super().__init__()
        if init not in CLASSIFIER_INITS:
            raise ValueError(f"classifier init must be one of {CLASSIFIER_INITS}, got {init!r}")
        if isinstance(devices, int):
            self.devices: list[torch.device] | None = None
            placement = [torch.device("cpu")] * devices
        else:
            self.devices = placement = [torch.device(d) for d in devices]
        self.in_features, self.n_classes = in_features, n_classes
        self.sizes = shard_sizes(n_classes, len(placement))
        full = torch.empty(n_classes, in_features)
        if init == "normal":
            full.normal_(0.0, NORMAL_INIT_STD)
        else:
            linear_init_(full, in_features)  # the same draws as nn.Linear
        self.shards = nn.ParameterList(
            nn.Parameter(rows.clone().to(device)) for rows, device in zip(full.split(self.sizes), placement)
        )

    @property
    def offsets(self) -> list[int]:
        return shard_offsets(self.sizes)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.devices is not None:  # pinned shards: moves change the dtype, never the device
            for shard, device in zip(self.shards, self.devices):
                if shard.device != device:
                    shard.data = shard.data.to(device)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = [F.linear(features.to(shard.device), shard).to(features.device) for shard in self.shards]
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """The whole [n_classes, in_features] weight, on the CPU."""
        return torch.cat([shard.detach().cpu() for shard in self.shards])

    @torch.no_grad()
    def load_full_weight(self, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != (self.n_classes, self.in_features):
            raise ValueError(f"weight {tuple(weight.shape)} != classifier ({self.n_classes}, {self.in_features})")
        for shard, rows in zip(self.shards, weight.split(self.sizes)):
            shard.copy_(rows)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_classes={self.n_classes}, shards={self.sizes}"


class _ShardedCrossEntropy(torch.autograd.Function):
    """Exact label-smoothed CE over class-sharded logits; backward is local to the shard."""

    @staticmethod
    def forward(ctx, logits, labels, shard_offset, n_classes, label_smoothing, group):
        logits = logits.float()
        n_rows, n_local = logits.shape
        # Softmax statistics over all shards: max (for stability), Σexp, and the sums of
        # logits (smoothing term) and target logits (each on the one rank owning the class).
        row_max = logits.max(dim=1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exp = (logits - row_max[:, None]).exp()
        local = labels - shard_offset
        owned = (local >= 0) & (local < n_local)
        target = torch.zeros(n_rows, dtype=logits.dtype, device=logits.device)
        target[owned] = logits[owned, local[owned]]
        sums = torch.stack([exp.sum(dim=1), logits.sum(dim=1), target])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        sum_exp, sum_logits, target = sums
        log_z = row_max + sum_exp.log()
        eps = label_smoothing
        # CE with smoothing: (1-ε)·(log Z - z_y) + ε·(log Z - mean_c z_c)
        loss = log_z - (1.0 - eps) * target - eps * sum_logits / n_classes
        ctx.save_for_backward(exp, sum_exp, local, owned)
        ctx.eps, ctx.n_classes = eps, n_classes
        return loss.mean()

    @staticmethod
    def backward(ctx, grad_loss):
        exp, sum_exp, local, owned = ctx.saved_tensors
        n_rows = exp.shape[0]
        # d loss_i / d z_ic = softmax_ic - q_ic, q = (1-ε)·onehot + ε/C; only this shard's columns.
        grad = exp / sum_exp[:, None] - ctx.eps / ctx.n_classes
        rows = owned.nonzero().squeeze(1)
        grad[rows, local[rows]] -= 1.0 - ctx.eps
        return grad * (grad_loss / n_rows), None, None, None, None, None


def sharded_cross_entropy(local_logits: torch.Tensor, labels: torch.Tensor, shard_offset: int, n_classes: int,
                          label_smoothing: float = 0.0, group=None) -> torch.Tensor:
    """Mean label-smoothed CE of ``labels`` given this rank's logits of classes [offset, offset + width).

    Every rank of ``group`` passes the logits of its own classes for the same
    rows (the global batch) and the same labels, and gets the same loss: the
    unsharded ``F.cross_entropy(full_logits, labels, label_smoothing=...)``.
    The gradient w.r.t. ``local_logits`` is the exact gradient of that loss
    (no collective in backward). Computed in fp32.
    """
    return _ShardedCrossEntropy.apply(local_logits, labels, shard_offset, n_classes, label_smoothing, group)


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order; backward: sum over ranks × ``grad_scale``, own rows.

    (torch.distributed.nn.functional.all_gather, deprecated, with the scale folded in.)
    """

    @staticmethod
    def forward(ctx, x, group, grad_scale):
        ctx.group, ctx.grad_scale = group, grad_scale
        world = dist.get_world_size(group)
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        world, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            own = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
            dist.reduce_scatter_tensor(own, grad.contiguous(), group=ctx.group)
        else:  # gloo has no reduce-scatter
            grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce into autograd's buffer
            dist.all_reduce(grad, group=ctx.group)
            own = grad.chunk(world)[rank]
        return own * ctx.grad_scale, None, None


class _RankShard(nn.Module):
    """What every class-split head of a DDP rank shares: its block of classes, and the global batch."""

    def __init__(self, n_classes: int, group=None) -> None:
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{type(self).__name__} needs torch.distributed initialised "
                               "(use the unsplit head in a single process)")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.n_classes = n_classes
        self.sizes = shard_sizes(n_classes, self.world_size)
        self.shard_offset = shard_offsets(self.sizes)[self.rank]
        self.n_local = self.sizes[self.rank]
        # Ranks share the seed (seed_everything): offset it by the shard, or equal shards would start equal.
        self.generator = torch.Generator().manual_seed((torch.initial_seed() + self.shard_offset) % 2**63)

    def global_batch(self, local_features: torch.Tensor, local_labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
        """Every rank's features (gathered with gradients, DDP's scaling folded in) and labels, in rank order."""
        sizes = [torch.zeros(1, dtype=torch.long, device=local_labels.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([local_labels.shape[0]], device=local_labels.device), group=self.group)
        if len({int(s) for s in sizes}) != 1:
            raise ValueError(f"local batch sizes differ across ranks ({[int(s) for s in sizes]}): "
                             "use equal batches (drop_last, PKSampler)")
        labels = [torch.empty_like(local_labels) for _ in range(self.world_size)]
        dist.all_gather(labels, local_labels.contiguous(), group=self.group)
        features = _GatherRows.apply(local_features, self.group, float(self.world_size))
        return features, torch.cat(labels)

    def classes(self) -> str:
        return f"rank={self.rank}, classes=[{self.shard_offset}, {self.shard_offset + self.n_local})"


class DistributedShardedCrossEntropy(_RankShard):
    """The classifier shard of this rank plus the CE over all ranks' shards (for DDP).

    ``forward(local_features, local_labels)`` takes this rank's batch (every
    rank the same batch size) and returns the CE over the global batch, the
    same on every rank. Gradients follow DDP's convention: the shard gets the
    exact gradient of that loss, and this rank's features get world size ×
    their exact gradient, so that after DDP averages the replicated
    parameters' gradients over ranks, every gradient equals the one of the
    unsharded CE over the global batch (DDP with a replicated classifier).
    """

    def __init__(self, in_features: int, n_classes: int, label_smoothing: float = 0.1, group=None) -> None:
        super().__init__(n_classes, group)
        self.in_features, self.label_smoothing = in_features, label_smoothing
        self.weight = nn.Parameter(linear_init_(torch.empty(self.n_local, in_features), in_features, self.generator))

    @torch.no_grad()
    def load_full_weight(self, weight: torch.Tensor) -> None:
        """Take this rank's rows of a whole [n_classes, in_features] weight."""
        if tuple(weight.shape) != (self.n_classes, self.in_features):
            raise ValueError(f"weight {tuple(weight.shape)} != classifier ({self.n_classes}, {self.in_features})")
        self.weight.copy_(weight[self.shard_offset:self.shard_offset + self.n_local])

    def forward(self, local_features: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        features, labels = self.global_batch(local_features, local_labels)
        logits = F.linear(features.to(self.weight.dtype), self.weight)
        return sharded_cross_entropy(logits, labels, self.shard_offset, self.n_classes, self.label_smoothing,
                                     self.group)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_classes={self.n_classes}, {self.classes()}"


class DistributedArcFace(_RankShard):
    """An ArcFace head whose kernel columns (classes) are split over DDP ranks; returns the CE over the
    global batch, as ``F.cross_entropy(ArcFaceHead(...)(embeddings, labels), labels)`` would.

    The kernel keeps :class:`~embedlab.models.arcface.ArcFaceHead`'s layout,
    [embedding_dim, classes of this rank], column-normalised, so the W matrix of
    class centroids loads into it block by block. Gradients follow
    :class:`DistributedShardedCrossEntropy`'s convention.
    """

    def __init__(self, embedding_dim: int, n_classes: int, m: float = 0.4, s: float = 40.0, group=None,
                 sample_rate: float = 1.0) -> None:
        super().__init__(n_classes, group)
        self.embedding_dim, self.m, self.s, self.sample_rate = embedding_dim, m, s, sample_rate
        bound = math.sqrt(6.0 / (embedding_dim + n_classes))  # xavier's, from the whole kernel's shape
        self.weight = nn.Parameter(torch.empty(embedding_dim, self.n_local).uniform_(-bound, bound,
                                                                                    generator=self.generator))

    @torch.no_grad()
    def load_full_weight(self, weight: torch.Tensor) -> None:
        """Take this rank's columns of a whole [embedding_dim, n_classes] kernel."""
        if tuple(weight.shape) != (self.embedding_dim, self.n_classes):
            raise ValueError(f"W matrix {tuple(weight.shape)} != head ({self.embedding_dim}, {self.n_classes})")
        self.weight.copy_(weight[:, self.shard_offset:self.shard_offset + self.n_local])

    def load_centroids(self, centroids: torch.Tensor) -> None:
        """This rank's columns of the W matrix ([embedding_dim, n_classes]), normalised as ArcFaceHead's."""
        self.load_full_weight(F.normalize(centroids.float(), dim=0))

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor, m: float | None = None) -> torch.Tensor:
        features, labels = self.global_batch(local_embeddings, local_labels)
        local = labels - self.shard_offset
        mine = (local >= 0) & (local < self.n_local)
        weight, offset = self.weight, self.shard_offset
        if self.training and self.sample_rate < 1.0:  # Partial FC: this rank's batch classes and random others
            columns = sample_class_columns(local[mine].unique(), self.n_local, self.sample_rate, self.generator)
            weight, offset = weight[:, columns], 0
            local = torch.where(mine, columns_of(local.clamp(0, self.n_local - 1), columns, self.n_local), -1)
            labels = local  # the CE finds each row's target by its position among this rank's sampled columns
        cosine = fp32_cosine(features, weight).clamp(-1, 1)
        owned = mine.nonzero().squeeze(1)  # rows whose class is on this rank
        target = add_margin(cosine[owned, local[owned]], self.m if m is None else m)
        logits = self.s * cosine.index_put((owned, local[owned]), target)
        return sharded_cross_entropy(logits, labels, offset, self.n_classes, 0.0, self.group)

    @torch.no_grad()
    def predict(self, local_embeddings: torch.Tensor) -> torch.Tensor:
        """The nearest class centre of each of this rank's rows, over every rank's block (as ArcFaceHead.predict)."""
        rows = [torch.empty_like(local_embeddings) for _ in range(self.world_size)]
        dist.all_gather(rows, local_embeddings.contiguous(), group=self.group)
        best, where = fp32_cosine(torch.cat(rows), self.weight).max(dim=1)
        bests = [torch.empty_like(best) for _ in range(self.world_size)]
        wheres = [torch.empty_like(where) for _ in range(self.world_size)]
        dist.all_gather(bests, best, group=self.group)
        dist.all_gather(wheres, where + self.shard_offset, group=self.group)
        winner = torch.stack(bests).argmax(dim=0)  # the rank holding each row's nearest centre
        predicted = torch.stack(wheres).gather(0, winner[None]).squeeze(0)
        n = local_embeddings.shape[0]
        return predicted[self.rank * n:(self.rank + 1) * n]

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, n_classes={self.n_classes}, {self.classes()}"


def exclude_shards_from_ddp(model: nn.Module) -> list[str]:
    """Keep every rank's head block (``DistributedShardedCrossEntropy``, ``DistributedArcFace``) in ``model`` out
    of DDP's gradient sync.

    Call before DDP wraps ``model`` (Lightning: in the module's ``__init__``
    or ``setup``). Returns the excluded parameter names.
    """
    names = [f"{prefix}.weight" if prefix else "weight" for prefix, module in model.named_modules()
             if isinstance(module, _RankShard)]
    ignored = sorted(set(getattr(model, "_ddp_params_and_buffers_to_ignore", ())) | set(names))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    return names
