"""LightningModule of the decoder stage: template -> face, through a frozen perceptor.

Manual optimisation, because the optional discriminator has an optimiser of
its own. Adam with cosine warm restarts stepped per epoch (the original's
T0 in epochs, eta_min) and gradient clipping. Validation decodes the test
templates, turns them into 8-bit images as a saved file would hold them,
re-embeds those with the template model and logs the cosine to the
original template: ``val_cosine_mean`` is what checkpoints and sweeps watch.

The perceptor and the template model are attached, not registered: they
are frozen, come from their own files, and must stay out of checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from embedlab.evaluation.image_quality import psnr, ssim
from embedlab.models.decoder import DecoderSpec, Discriminator, TemplateDecoder, to_uint8, to_unit_range
from embedlab.models.decoder_losses import adversarial_loss, laplace_loss, perceptual_loss


@torch.no_grad()
def photo_similarity(decoded: torch.Tensor, photos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR and SSIM of each decoded face, as an 8-bit image, to its photo (both in the decoder's
    normalised space)."""
    saved = to_uint8(decoded).float() / 255.0
    target = to_unit_range(photos.float())
    return psnr(saved, target), ssim(saved, target)


class DecoderModule(pl.LightningModule):
    def __init__(
        self,
        spec: dict[str, Any],
        mse_weight: float = 1.0,
        laplace_weight: float = 1.0,
        perceptual_weight: float = 11.0,
        use_discriminator: bool = False,
        discr_weight: float = 0.01,
        lr: float = 1e-3,
        min_lr: float = 1e-5,
        restart_epochs: int = 10,
        max_grad_norm: float = 10.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = TemplateDecoder(DecoderSpec(**spec))
        self.discriminator = Discriminator(self.model.spec.output_size) if use_discriminator else None
        self.automatic_optimization = False
        self._frozen: dict[str, Any] = {}
        self._cosines: list[torch.Tensor] = []
        self._quality: list[torch.Tensor] = []  # per image: PSNR, SSIM of the decoded face to its photo

    def attach(self, perceptor, template_model) -> "DecoderModule":
        """The frozen perceptor (training loss) and template model (validation)."""
        self._frozen = {"perceptor": perceptor, "template_model": template_model}
        return self

    def on_fit_start(self) -> None:
        for model in self._frozen.values():
            model.to(self.device)

    def losses(self, reconstruction: torch.Tensor, photos: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.hparams
        parts = {"mse": F.mse_loss(reconstruction.float(), photos.float())}
        if h.laplace_weight:
            parts["laplace"] = laplace_loss(reconstruction, photos)
        if h.perceptual_weight:
            parts["perceptual"] = perceptual_loss(self._frozen["perceptor"], reconstruction, photos)
        total = (h.mse_weight * parts["mse"] + h.laplace_weight * parts.get("laplace", 0.0)
                 + h.perceptual_weight * parts.get("perceptual", 0.0))
        return {"loss": total, **parts}

    def training_step(self, batch, batch_idx: int):
        if batch is None:  # every photo of the batch was unreadable and skipped
            return None
        templates, photos = batch
        opt_g, opt_d = self._decoder_and_discriminator_optimizers()
        reconstruction = self.model(templates)
        parts = self.losses(reconstruction, photos)
        loss = parts["loss"]
        if self.discriminator is not None:
            parts["adversarial"] = adversarial_loss(self.discriminator(reconstruction), real=True)
            loss = loss + self.hparams.discr_weight * parts["adversarial"]
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"decoder: training loss is {float(loss)} at step {self.global_step} "
                                     f"(parts: { {k: float(v) for k, v in parts.items()} })")
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()  # clipping happens in on_before_optimizer_step, after fp16 unscaling
        if opt_d is not None:
            d_loss = 0.5 * (adversarial_loss(self.discriminator(photos), real=True)
                            + adversarial_loss(self.discriminator(reconstruction.detach()), real=False))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            self.log("train_discriminator_loss", d_loss,
                     on_step=False, on_epoch=True, batch_size=len(templates), sync_dist=True)
        n = len(templates)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        for name, value in parts.items():
            if name != "loss":
                self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip the decoder's gradients here: Lightning calls this after unscaling fp16 gradients,
        so ``max_grad_norm`` means the same in every precision."""
        if optimizer.param_groups[0]["params"][0] is next(self.model.parameters()):
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm,
                                gradient_clip_algorithm="norm")

    def _decoder_and_discriminator_optimizers(self):
        """(decoder's, discriminator's or None): Lightning returns a list only when there are two."""
        optimizers = self.optimizers()
        return tuple(optimizers) if isinstance(optimizers, list) else (optimizers, None)

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()
        self.log("lr", self._decoder_and_discriminator_optimizers()[0].param_groups[0]["lr"])

    @torch.no_grad()
    def reembed_cosines(self, templates: torch.Tensor, decoded: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine between each template and the template of its decoded, 8-bit image
        (``decoded``: the decoder's output for ``templates`` when the caller has it already)."""
        decoded = self.model(templates) if decoded is None else decoded
        images = to_uint8(decoded).float() / 255.0
        again = self._frozen["template_model"].embed(images)
        return (F.normalize(templates.float(), dim=-1) * again.float()).sum(dim=1)

    def validation_step(self, batch, batch_idx: int):
        if batch is None:
            return
        templates, photos = batch
        decoded = self.model(templates)  # once, for both the cosine and the loss
        self._cosines.append(self.reembed_cosines(templates, decoded).cpu())
        self._quality.append(torch.stack(photo_similarity(decoded, photos), dim=1).cpu())
        self.log("val_loss", self.losses(decoded, photos)["loss"], batch_size=len(templates))

    def on_validation_epoch_end(self) -> None:
        if not self._cosines:
            return
        cosines = torch.cat(self._cosines)
        self._cosines.clear()
        self.log("val_cosine_mean", cosines.mean(), prog_bar=True)
        self.log("val_cosine_min", cosines.min())
        quality = torch.cat(self._quality).mean(dim=0)
        self._quality.clear()
        self.log("val_psnr", quality[0])
        self.log("val_ssim", quality[1])

    def configure_optimizers(self):
        h = self.hparams

        def with_restarts(optimizer):
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                optimizer, T_0=max(1, h.restart_epochs), eta_min=h.min_lr)}

        decoder = with_restarts(torch.optim.Adam(self.model.parameters(), lr=h.lr))
        if self.discriminator is None:
            return decoder
        return [decoder, with_restarts(torch.optim.Adam(self.discriminator.parameters(), lr=h.lr, betas=(0.5, 0.999)))]
