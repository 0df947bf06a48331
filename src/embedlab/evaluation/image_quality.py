"""How close a decoded face is to its photo, pixel-wise: PSNR and SSIM (images in [0, 1], B × 3 × H × W).

The template cosine says whether a face-recognition model is fooled; these
say whether a person would see the same face. SSIM follows Wang et al.
(2004) as scikit-image computes it with ``gaussian_weights=True``: an 11-tap
Gaussian window of σ 1.5, C1 = (0.01)², C2 = (0.03)², sample covariances,
the mean over pixels and channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image pair (peak 1.0); identical images give +inf."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity of each image pair (mean over the valid window positions and the channels)."""
    a, b = a.double(), b.double()
    channels = a.shape[1]
    g = _gaussian_window(size, sigma).to(a.device)
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:  # "valid" filtering, as scikit-image crops the borders
        return F.conv2d(x, kernel, groups=channels)

    n = size * size
    cov_norm = n / (n - 1)  # sample (not population) covariances, as scikit-image's default
    mu_a, mu_b = blur(a), blur(b)
    var_a = cov_norm * (blur(a * a) - mu_a ** 2)
    var_b = cov_norm * (blur(b * b) - mu_b ** 2)
    cov = cov_norm * (blur(a * b) - mu_a * mu_b)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1).float()
