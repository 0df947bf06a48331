"""P identities × K instances per batch, for batch-hard triplet losses.

Used by the GeM trainer (32 × 4, docs/originals/gem.md) and the triplet face stage
(16 × 4). Like the re-ID RandomIdentitySampler the original used, an
identity with fewer than K images is sampled with replacement.

Use it with ``DataLoader(dataset, batch_size=sampler.batch_size,
sampler=sampler)``: it yields flat indices, K consecutive ones per identity,
P identities per batch, always full batches. Under DDP give every rank its
own sampler (``num_replicas``, ``rank``) and turn off Lightning's sampler
replacement (``Trainer(use_distributed_sampler=False)``): a
DistributedSampler over these indices would break the P × K structure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[int]):
    """Batches of ``p`` distinct identities × ``k`` instances, reproducible per (seed, epoch).

    ``length``: batches per epoch (per rank), e.g. the original's 8000
    iterations. Default: enough batches to draw every identity once,
    ``ceil(n_identities / (p · num_replicas))``. ``len(sampler)`` counts
    indices: batches × p × k. Identities are drawn from successive random
    permutations, so each is drawn about equally often whatever the length.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int, length: int | None = None,
                 num_replicas: int = 1, rank: int = 0, draws: bool = False) -> None:
        """``draws``: yield ``(draw, index)``, ``draw`` numbering the epoch's draws of all ranks, for a dataset
        that seeds each sample's random transform by it (the same images whatever the worker count)."""
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: p and k must be at least 1, got p={p}, k={k}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"PKSampler: rank {rank} outside 0..{num_replicas - 1}")
        groups: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            groups[int(label)].append(index)
        if len(groups) < 2:
            raise ValueError(f"PKSampler: {len(groups)} identity in the labels, a triplet batch needs at least 2")
        if len(groups) < p:
            raise ValueError(f"PKSampler: {p} identities per batch, but the labels have only {len(groups)}")
        self.members = [np.asarray(groups[label]) for label in sorted(groups)]
        self.p, self.k, self.seed = p, k, seed
        self.num_replicas, self.rank = num_replicas, rank
        if length is None:
            length = -(-len(self.members) // (p * num_replicas))
        if length < 1:
            raise ValueError(f"PKSampler: length must be at least 1 batch, got {length}")
        self.n_batches = length
        self.epoch = 0
        self.draws = draws

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning's fit loop at every epoch: a new draw per epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches * self.batch_size

    def _identity_batches(self, rng: np.random.Generator) -> Iterator[list[int]]:
        """P distinct identities per batch, read from a stream of permutations.

        Where a batch crosses from one permutation into the next, an identity
        already in the batch is deferred to the next batch.
        """
        n_ids = len(self.members)
        stream, position, deferred = rng.permutation(n_ids), 0, []
        while True:
            batch: list[int] = []
            later: list[int] = []
            for identity in deferred:
                (later if identity in batch or len(batch) == self.p else batch).append(identity)
            while len(batch) < self.p:
                if position == n_ids:
                    stream, position = rng.permutation(n_ids), 0
                identity = int(stream[position])
                position += 1
                (later if identity in batch else batch).append(identity)
            deferred = later
            yield batch

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._identity_batches(rng)
        per_epoch = self.n_batches * self.num_replicas * self.batch_size
        for number in range(self.n_batches * self.num_replicas):
            identities = next(batches)
            # Draw the instances on every rank, so that the random stream stays the same on all of them.
            chosen = [rng.choice(self.members[i], self.k, replace=len(self.members[i]) < self.k) for i in identities]
            if number % self.num_replicas == self.rank:
                flat = (int(i) for indices in chosen for i in indices)
                if not self.draws:
                    yield from flat
                    continue
                first = self.epoch * per_epoch + number * self.batch_size
                yield from ((first + j, i) for j, i in enumerate(flat))


class EpochIndices(Sampler[tuple[int, int]]):
    """``(epoch, index)`` for every item, shuffled per (seed, epoch); with ``num_replicas`` ranks, this rank's
    share of that order (every ``num_replicas``-th item from ``rank``; the order is padded by its own start
    so that every rank gets as many items, and DDP's collectives stay in step).

    A dataset that seeds an item's random draws from this pair gives the same
    data for any loader worker count (see :class:`embedlab.data.drip.QueryViews`).
    Lightning's fit loop calls :meth:`set_epoch` at every epoch, so a resumed
    run continues with the epoch it stopped in.
    """

    def __init__(self, n_items: int, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"EpochIndices: rank {rank} outside 0..{num_replicas - 1}")
        self.n_items, self.seed, self.shuffle = n_items, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n_items // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items) if self.shuffle \
            else np.arange(self.n_items)
        padded = np.resize(order, len(self) * self.num_replicas)  # np.resize repeats from the start
        return ((self.epoch, int(i)) for i in padded[self.rank::self.num_replicas])
