"""PCA whitening learnt on training-set descriptors.

Fit on descriptors of the *training* image set, never on queries or
references (the evaluation images must not shape the transform)::

    x' = normalise( (x - mean) @ V_k * (lambda_k + eps) ** -power )

``V_k`` holds the top ``dim`` principal directions of the training
covariance (eigenvalues ``lambda_k``, descending). ``power`` sets how much
the components are equalised: 0.5 is full whitening (identity covariance on
the kept dimensions; the ISC 2nd-place "eigen power -0.5"), 0 is a plain PCA
projection, values in between whiten partially (e.g. 0.25 damps the leading
components less aggressively). The result is L2-normalised so that inner
product stays cosine similarity.

Saved as safetensors (``mean``, ``components``, ``eigenvalues`` and the
settings in the metadata): no pickle.

Ours, not ``faiss.PCAMatrix(D, dim, eigen_power=-power)``: faiss forms the
covariance in float32 as X^T X − n·μμ^T, which cancels on off-centre
L2-normalised descriptors (20k × 256, same eps: smallest eigenvalues 0.3%
off, whitened cosines by up to 4e-4). It also subsamples above 1000·D rows,
returns unnormalised eigenvalues (its ``epsilon`` is ours × (n − 1)) and has
neither the rank check nor deterministic signs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedlab.atomic import atomic_path
from embedlab.postprocess.neighbours import check_finite

FORMAT = "embedlab.whitening/1"
_CHUNK = 16384  # rows per chunk: bounds the float64 temporaries of fit and apply


class WhiteningFileError(ValueError):
    """A whitening file is missing, unreadable or inconsistent."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {problem}")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Vectors (the last axis: the rows of a matrix) divided by their L2 norm (all-zero ones stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Whitening:
    """A fitted PCA whitening: ``mean`` (D), ``components`` (D x dim), ``eigenvalues`` (dim)."""

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    power: float = 0.5
    eps: float = 1e-6
    n_train: int = 0

    @property
    def dim_in(self) -> int:
        return int(self.components.shape[0])

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def projection(self) -> np.ndarray:
        """``components`` with each column scaled by ``(eigenvalue + eps) ** -power`` (float32)."""
        scale = (self.eigenvalues.astype(np.float64) + self.eps) ** -self.power
        return (self.components.astype(np.float64) * scale).astype(np.float32)

    def apply(self, x: np.ndarray, normalize: bool = True, what: str = "descriptors") -> np.ndarray:
        """Whiten rows of ``x`` (N x dim_in) into N x dim, L2-normalised unless ``normalize=False``."""
        x = check_finite(x, what)
        if x.shape[1] != self.dim_in:
            raise ValueError(
                f"{what}: dimension {x.shape[1]} differs from the {self.dim_in} the whitening was trained on"
            )
        proj, mean = self.projection, self.mean.astype(np.float32)
        out = np.empty((x.shape[0], self.dim), np.float32)
        for start in range(0, x.shape[0], _CHUNK):
            stop = start + _CHUNK
            out[start:stop] = (x[start:stop] - mean) @ proj
        return l2_normalize(out) if normalize else out

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file atomically."""
        from safetensors.numpy import save_file

        tensors = {
            "mean": np.ascontiguousarray(self.mean, np.float32),
            "components": np.ascontiguousarray(self.components, np.float32),
            "eigenvalues": np.ascontiguousarray(self.eigenvalues, np.float64),
        }
        meta = {"format": FORMAT, "power": repr(float(self.power)), "eps": repr(float(self.eps)),
                "n_train": str(int(self.n_train))}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Whitening":
        """Read a file written by :meth:`save`; WhiteningFileError (naming it) on any problem."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise WhiteningFileError(path, "file not found")
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise WhiteningFileError(path, f"not a readable safetensors file ({err})") from err
        if meta.get("format") != FORMAT:
            raise WhiteningFileError(path, f"not a whitening file (format {meta.get('format')!r}, expected {FORMAT!r})")
        missing = {"mean", "components", "eigenvalues"} - tensors.keys()
        if missing:
            raise WhiteningFileError(path, f"missing tensors: {', '.join(sorted(missing))}")
        mean, comps, eig = tensors["mean"], tensors["components"], tensors["eigenvalues"]
        if comps.ndim != 2 or mean.shape != (comps.shape[0],) or eig.shape != (comps.shape[1],):
            raise WhiteningFileError(
                path, f"inconsistent shapes: mean {mean.shape}, components {comps.shape}, eigenvalues {eig.shape}"
            )
        return cls(mean, comps, eig, power=float(meta["power"]), eps=float(meta["eps"]),
                   n_train=int(meta.get("n_train", 0)))


def fit_whitening(train: np.ndarray, dim: int | None = None, power: float = 0.5, eps: float = 1e-6) -> Whitening:
    """Fit PCA whitening to training descriptors (N x D), keeping ``dim`` components (default D).

    Needs ``dim <= D`` and more training descriptors than ``dim`` (centring
    uses one degree of freedom). Raises ValueError on NaN/inf input, on a bad
    ``dim``/``power``, or when the training descriptors span fewer than
    ``dim`` dimensions (a kept eigenvalue would be ~0 and blow up its noise).
    """
    train = check_finite(train, "training descriptors")
    n, d = train.shape
    dim = d if dim is None else int(dim)
    if dim < 1:
        raise ValueError(f"whitening dim must be >= 1, got {dim}")
    if dim > d:
        raise ValueError(f"whitening dim {dim} exceeds the training descriptors' dimension {d}")
    if n <= dim:
        raise ValueError(f"whitening to {dim} dims needs more than {dim} training descriptors, got {n}")
    if power < 0:
        raise ValueError(f"whitening power must be >= 0 (0.5 = full whitening), got {power}")
    if eps < 0:
        raise ValueError(f"whitening eps must be >= 0, got {eps}")

    # Covariance in float64, accumulated in chunks: (X^T X - n mu mu^T) / (n - 1).
    total = np.zeros(d, np.float64)
    gram = np.zeros((d, d), np.float64)
    for start in range(0, n, _CHUNK):
        block = train[start:start + _CHUNK].astype(np.float64)
        total += block.sum(axis=0)
        gram += block.T @ block
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    eigvals, eigvecs = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(eigvals)[::-1][:dim]
    eigvals, eigvecs = np.clip(eigvals[order], 0.0, None), eigvecs[:, order]
    # Deterministic signs: the largest-magnitude entry of each direction is positive.
    signs = np.sign(eigvecs[np.argmax(np.abs(eigvecs), axis=0), np.arange(dim)])
    eigvecs = eigvecs * np.where(signs == 0, 1.0, signs)

    floor = 1e-10 * max(float(eigvals[0]), np.finfo(np.float64).tiny)
    rank = int(np.count_nonzero(eigvals > floor))
    if rank < dim:
        raise ValueError(
            f"the training descriptors span only {rank} dimensions: lower the whitening dim from {dim} to <= {rank}"
        )
    return Whitening(mean.astype(np.float32), eigvecs.astype(np.float32), eigvals, float(power), float(eps), n)
