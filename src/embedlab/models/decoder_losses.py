"""Losses of the template decoder (docs/originals/decoder.md).

    loss = mse_weight·MSE + laplace_weight·Laplace + perceptual_weight·perceptual
           + discr_weight·adversarial   (when a discriminator is used)

- Laplace: the MSE between per-channel ``‖Laplacian(img)‖ / (H·W)`` of the
  photo and of the reconstruction (kernel [[1,1,1],[1,−8,1],[1,1,1]], no
  padding): the two images should be equally sharp.
- Perceptual: the mean, over the perceptor's feature nodes (intermediate
  layers and the embedding), of the MSE between the features of the photo
  and of the reconstruction. The perceptor sees images in [0, 1].
- Adversarial: the non-saturating form, BCE(D(reconstruction), real). The
  issue writes it as "− discr_weight·(discriminator loss)"; both push the
  reconstructions towards what D calls real, this one with useful gradients
  while D wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedlab.models.decoder import to_unit_range

LAPLACE_KERNEL = torch.tensor([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])


def laplace_energy(images: torch.Tensor) -> torch.Tensor:
    """(B, C): the Frobenius norm of each channel's Laplacian, divided by H·W."""
    b, c, h, w = images.shape
    kernel = LAPLACE_KERNEL.to(images.device, images.dtype).expand(c, 1, 3, 3)
    laplacian = F.conv2d(images, kernel, groups=c)
    return laplacian.flatten(2).norm(dim=2) / (h * w)


def laplace_loss(reconstruction: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(laplace_energy(reconstruction.float()), laplace_energy(photo.float()))


def perceptual_loss(perceptor, reconstruction: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """Mean over feature nodes of MSE(features(reconstruction), features(photo)); the photo side is constant."""
    with torch.no_grad():
        target = perceptor.features(to_unit_range(photo))
    produced = perceptor.features(to_unit_range_grad(reconstruction))
    losses = [F.mse_loss(p.float(), t.float()) for p, t in zip(produced, target)]
    return torch.stack(losses).mean()


def to_unit_range_grad(output: torch.Tensor) -> torch.Tensor:
    """Decoder output to [0, 1] without clamping: clamping would cut the gradient of overshooting pixels."""
    return output * 0.5 + 0.5


def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target)
