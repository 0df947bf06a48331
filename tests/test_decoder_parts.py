"""The decoder's pieces: architecture, losses, templates, threshold, face models (PyTorch and ONNX)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from embedlab.config import ConfigError, DecoderConfig
from embedlab.data.templates import TemplateFileError, TemplateSet, read_template_set, write_template_set
from embedlab.models.checkpoints import export_descriptor_model
from embedlab.models.decoder import DecoderSpec, Discriminator, TemplateDecoder, to_uint8
from embedlab.models.decoder_losses import laplace_loss, perceptual_loss
from embedlab.models.face_encoder import FaceEncoder, FaceEncoderSpec
from embedlab.models.face_models import FaceModelError, export_onnx_face_model, load_face_model
from embedlab.evaluation.decoder_cosine import (cosine_stats, format_stats, impostor_pair_count, impostor_threshold,
                                                threshold_at_fmr)


def test_original_decoder_shape_size_and_image_range():
    decoder = TemplateDecoder(DecoderSpec(template_dim=512, output_size=112)).eval()
    templates = torch.nn.functional.normalize(torch.randn(3, 512), dim=1)
    out = decoder(templates)
    assert out.shape == (3, 3, 112, 112)
    # The original's "model size: 26.362 MB" (MiB of float32 parameters, BN buffers aside).
    size_mib = sum(p.numel() for p in decoder.parameters()) * 4 / 2**20
    assert size_mib == pytest.approx(26.36, abs=0.05)
    image = to_uint8(out)
    assert image.dtype == torch.uint8 and image.shape == out.shape
    # Outputs are normalised by mean 0.5 / std 0.5; beyond ±1 they are clipped, not wrapped.
    assert to_uint8(torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0])).tolist() == [0, 0, 128, 191, 255, 255]


@pytest.mark.parametrize("dim,size,variant", [(192, 64, "base"), (16, 8, "base"), (512, 112, "large"), (32, 96, "base")])
def test_decoder_output_size_and_discriminator_follow_the_spec(dim, size, variant):
    decoder = TemplateDecoder(DecoderSpec(template_dim=dim, output_size=size, variant=variant, width=0.25))
    out = decoder(torch.randn(2, dim))
    assert out.shape == (2, 3, size, size)
    assert Discriminator(size)(out).shape == (2,)


def test_decoder_rejects_templates_of_the_wrong_size():
    decoder = TemplateDecoder(DecoderSpec(template_dim=64, output_size=32, width=0.25))
    with pytest.raises(ValueError, match=r"templates must be \(batch, 64\), got \(2, 32\)"):
        decoder(torch.randn(2, 32))
    with pytest.raises(ValueError, match="output_size must be even"):
        DecoderSpec(output_size=111)


def _laplace_energy_by_hand(img: np.ndarray) -> np.ndarray:
    """Per channel: sqrt(sum of squared valid 3×3 Laplacian responses) / (H·W), with explicit loops."""
    kernel = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=np.float64)
    c, h, w = img.shape
    out = np.zeros(c)
    for ch in range(c):
        total = 0.0
        for i in range(h - 2):
            for j in range(w - 2):
                total += float((img[ch, i:i + 3, j:j + 3] * kernel).sum()) ** 2
        out[ch] = np.sqrt(total) / (h * w)
    return out


def test_laplace_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 6, 5)), rng.normal(size=(2, 3, 6, 5))
    expected = np.mean([(_laplace_energy_by_hand(x) - _laplace_energy_by_hand(y)) ** 2 for x, y in zip(a, b)])
    got = laplace_loss(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    flat = torch.zeros(1, 3, 6, 5)  # a flat image has no Laplacian energy: equally flat images cost nothing
    assert float(laplace_loss(flat, flat + 0.3)) == 0.0


def _encoder_file(tmp_path, name="enc", seed=0, img_size=32):
    torch.manual_seed(seed)
    model = FaceEncoder(FaceEncoderSpec(backbone="vit_tiny_patch16_224", img_size=img_size, patch_size=8, depth=2))
    return export_descriptor_model(model.eval(), tmp_path / f"{name}.safetensors")


def test_perceptual_loss_is_zero_for_the_photo_itself_and_reaches_the_decoder(tmp_path):
    perceptor = load_face_model(_encoder_file(tmp_path), "perceptor", n_layers=2)
    assert len(perceptor.features(torch.rand(1, 3, 32, 32))) == 3  # two block outputs + the embedding
    photo = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(perceptual_loss(perceptor, photo, photo)) == pytest.approx(0.0, abs=1e-10)
    decoder = TemplateDecoder(DecoderSpec(template_dim=16, output_size=32, width=0.125))
    perceptual_loss(perceptor, decoder(torch.randn(2, 16)), photo).backward()
    assert decoder.blocks[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptor.parameters())  # frozen


def _templates(n=6, dim=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_template_files_round_trip_and_bad_templates_name_the_file(tmp_path):
    ts = TemplateSet.from_rows([f"train/images/p{i // 2}/{i}.jpg" for i in range(6)], [f"p{i // 2}" for i in range(6)],
                               _templates())
    write_template_set(tmp_path, "train", ts)
    back = read_template_set(tmp_path, "train", dim=8)
    assert back.paths == ts.paths and [back.person_name(i) for i in range(6)] == ["p0", "p0", "p1", "p1", "p2", "p2"]
    np.testing.assert_allclose(back.templates, ts.templates)
    with pytest.raises(TemplateFileError, match=r"train\.h5: templates have 8 dimensions, the decoder expects 512"):
        read_template_set(tmp_path, "train", dim=512)

    write_template_set(tmp_path, "raw", dataclasses.replace(ts, templates=ts.templates * 3))
    with pytest.raises(TemplateFileError, match=r"raw\.h5: 6 templates are not L2-normalised \(row 0 has norm 3"):
        read_template_set(tmp_path, "raw")
    bad = ts.templates.copy()
    bad[4, 2] = np.nan
    import h5py  # a NaN written by some other tool

    write_template_set(tmp_path, "nan", ts)
    with h5py.File(tmp_path / "nan.h5", "r+") as f:
        f["vectors"][...] = bad
    with pytest.raises(ValueError, match=r"nan\.h5.*NaN"):
        read_template_set(tmp_path, "nan")

    # A table edited by hand that no longer lists the templates' photos, row for row.
    table = tmp_path / "train.csv"
    table.write_text(table.read_text().replace("p1/3.jpg", "p1/33.jpg"))
    with pytest.raises(TemplateFileError, match=r"train\.csv: its paths do not match the templates of train\.h5: "
                                                r"row 4 is 'train/images/p1/33\.jpg', template 3 is 'train/images/p1/3\.jpg'"):
        read_template_set(tmp_path, "train")
    table.write_text("path,who\nx.jpg,p0\n")
    with pytest.raises(TemplateFileError, match=r"train\.csv: needs columns path, person; missing person"):
        read_template_set(tmp_path, "train")


def test_template_threshold_from_blocks_equals_the_one_from_every_score_and_samples_what_the_fmr_needs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    persons = [f"p{i // 3}" for i in range(300)]  # 100 persons, 3 templates each
    ts = TemplateSet.from_rows([f"{i}.jpg" for i in range(300)], persons, x)
    i, j = np.triu_indices(300, k=1)
    every = (x[i] * x[j]).sum(1)[np.asarray(persons)[i] != np.asarray(persons)[j]]
    assert impostor_pair_count(ts.person) == len(every) == 44_550

    threshold, used = impostor_threshold(ts, 0.01)
    assert used == len(every) and threshold == pytest.approx(threshold_at_fmr(every, 0.01), abs=1e-6)
    # An FMR that needs more pairs than min_pairs: min_pairs is raised to 100 / fmr, the pairs of a random subset.
    threshold, used = impostor_threshold(ts, 0.005, min_pairs=1000)
    assert 20_000 <= used < 22_000 and abs(threshold - threshold_at_fmr(every, 0.005)) < 0.02
    with pytest.raises(ValueError, match=r"fmr 1e-05 needs at least 100,000 impostor pairs; .* give 44,550"):
        impostor_threshold(ts, 1e-5)


def test_threshold_is_the_impostor_score_at_the_false_match_rate():
    impostors = np.linspace(0.0, 0.999, 1000)  # 1000 impostor pairs
    t = threshold_at_fmr(impostors, 0.01)
    assert (impostors > t).mean() <= 0.01 and (impostors >= t).mean() > 0.01
    with pytest.raises(ValueError, match=r"fmr 1e-06 needs at least 1,000,000 impostor pairs.*decoder.threshold"):
        threshold_at_fmr(impostors, 1e-6)
    # Same-person pairs are not impostors.
    ts = TemplateSet.from_rows(["a", "b", "c"], ["p", "p", "q"], _templates(3))
    assert impostor_pair_count(ts.person) == 2
    stats = cosine_stats(np.array([0.5, 0.7, 0.9, 0.95]), threshold=0.8)
    assert stats["above_threshold"] == 0.5 and stats["cosine_median"] == pytest.approx(0.8)
    report = format_stats(stats, "test", 0.01)
    assert "COSINE MEAN:   0.7625" in report and "ABOVE THRESHOLD 0.8000 (FMR 0.01): 50.0 %" in report


def test_onnx_export_of_a_project_encoder_gives_the_same_templates(tmp_path):
    encoder = _encoder_file(tmp_path)
    onnx_path = export_onnx_face_model(encoder, tmp_path / "encoder.onnx")
    torch_model, onnx_model = load_face_model(encoder, "template"), load_face_model(onnx_path, "template")
    assert (onnx_model.input_size, onnx_model.embedding_dim) == (32, torch_model.embedding_dim)
    images = torch.rand(5, 3, 48, 48)  # resized to the model's 32 px by both
    with torch.no_grad():
        np.testing.assert_allclose(onnx_model.embed(images).numpy(), torch_model.embed(images).numpy(), atol=1e-4)
    # As a perceptor the ONNX file becomes a differentiable PyTorch module with the same embedding.
    perceptor = load_face_model(onnx_path, "perceptor")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (embedding,) = perceptor.features(x)
    embedding.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    np.testing.assert_allclose(torch.nn.functional.normalize(embedding, dim=1).detach().numpy(),
                               torch_model.embed(x.detach()).numpy(), atol=1e-4)


BLOCK_ENDS = ["/body/blocks/blocks.0/Add_1", "/body/blocks/blocks.1/Add_1_output_0"]  # a node, an output tensor


def test_onnx_perceptor_gives_the_named_nodes_as_the_encoder_gives_its_blocks(tmp_path):
    encoder = _encoder_file(tmp_path)
    onnx_path = export_onnx_face_model(encoder, tmp_path / "encoder.onnx")
    torch_perceptor = load_face_model(encoder, "perceptor", n_layers=2)  # the outputs of its two blocks
    onnx_perceptor = load_face_model(onnx_path, "perceptor", nodes=BLOCK_ENDS)
    assert onnx_perceptor.feature_nodes == ["/body/blocks/blocks.0/Add_1", "/body/blocks/blocks.1/Add_1"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got, expected = onnx_perceptor.features(x), torch_perceptor.features(x)
    assert [f.shape for f in got] == [(2, 17, 192), (2, 17, 192), (2, 192)]
    for g, e in zip(got[:2], expected[:2]):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-4)
    # An ONNX face model outputs the raw embedding, the project encoder its normalised one.
    np.testing.assert_allclose(torch.nn.functional.normalize(got[2]).numpy(), expected[2].numpy(), atol=1e-4)

    # The perceptual loss is the mean over the three nodes, not the embedding's term alone.
    photo, reconstruction = torch.rand(2, 3, 32, 32) * 2 - 1, (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    loss = perceptual_loss(onnx_perceptor, reconstruction, photo)
    with torch.no_grad():
        pairs = zip(onnx_perceptor.features(reconstruction * 0.5 + 0.5), onnx_perceptor.features(photo * 0.5 + 0.5))
        terms = [torch.nn.functional.mse_loss(r, p) for r, p in pairs]
    assert loss.item() == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    assert loss.item() != pytest.approx(float(terms[-1]), rel=0.05)
    loss.backward()
    assert reconstruction.grad.abs().sum() > 0


class _IBasicBlock(torch.nn.Module):
    """arcface_torch's iresnet block: BN, conv, BN, PReLU, strided conv, BN, plus a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride > 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class _TinyIResNet(torch.nn.Module):
    """An iresnet in miniature (32 px in, layers at 16, 8, 4 and 2 px, BN after layer4, 16-d embedding)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8))
        widths = [8, 8, 16, 16, 24]
        self.layers = nn.ModuleList(nn.Sequential(_IBasicBlock(widths[i], widths[i + 1], 2),
                                                  _IBasicBlock(widths[i + 1], widths[i + 1], 1)) for i in range(4))
        self.bn2, self.fc, self.features = nn.BatchNorm2d(24), nn.Linear(24 * 2 * 2, 16), nn.BatchNorm1d(16)
        # Trained-looking BatchNorms, but fresh ones in the stem and shortcuts: folded into their convolutions they
        # give equal biases, which the exporter stores once (the shared weights onnx2torch cannot take as they are).
        for name, m in self.named_modules():
            fresh = name.startswith("stem") or "shortcut" in name
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and not fresh:
                for t in (m.running_mean, m.weight, m.bias):
                    t.data.uniform_(-0.5, 0.5)
                m.running_var.data.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


def test_onnx_perceptor_takes_the_ends_of_an_iresnets_last_stages_by_default(tmp_path):
    torch.manual_seed(0)
    net, path = _TinyIResNet().eval(), tmp_path / "iresnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["images"],
                          output_names=["embedding"], dynamic_axes={"images": {0: "b"}, "embedding": {0: "b"}},
                          dynamo=False, opset_version=17)
    ends: list[torch.Tensor] = []  # layer1-3 and layer4 after its closing BN, as PyTorch computes them
    for m in (*net.layers[:3], net.bn2):
        m.register_forward_hook(lambda _m, _i, out: ends.append(out))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        embedding = net((x - 0.5) / 0.5)  # the ONNX face-model input convention
        features = load_face_model(path, "perceptor", n_layers=4).features(x)
        last_two = load_face_model(path, "perceptor", n_layers=2).features(x)
    assert [tuple(f.shape[1:]) for f in features] == [(8, 16, 16), (16, 8, 8), (16, 4, 4), (24, 2, 2), (16,)]
    for got, expected in zip(features, [*ends, embedding]):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)
    assert len(last_two) == 3 and all(torch.equal(a, b) for a, b in zip(last_two, features[2:]))


def test_perceptor_node_that_does_not_exist_is_named_with_nodes_that_do(tmp_path):
    encoder = _encoder_file(tmp_path)
    onnx_path = export_onnx_face_model(encoder, tmp_path / "encoder.onnx")
    with pytest.raises(ValueError, match=r"encoder\.onnx: has no node 'blocks\.9' \(decoder\.perceptor_nodes\).*"
                                         r"e\.g\. .*'/body/blocks/blocks\.1/Add_1' \(17, 192\)"):
        load_face_model(onnx_path, "perceptor", nodes=[BLOCK_ENDS[0], "blocks.9"])
    with pytest.raises(FaceModelError, match=r"enc\.safetensors: decoder\.perceptor_nodes names nodes of an ONNX"):
        load_face_model(encoder, "perceptor", n_layers=2, nodes=BLOCK_ENDS)
    with pytest.raises(ConfigError, match=r"decoder\.perceptor_nodes must be a list of ONNX node names, got 'x'"):
        DecoderConfig(perceptor_nodes="x")


def test_onnx_file_that_is_not_a_face_model_is_refused(tmp_path):
    feature_map = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))  # (B, 4, H, W): no embedding
    path = tmp_path / "segmenter.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(feature_map, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["x"],
                          dynamic_axes={"x": {0: "b"}}, dynamo=False)
    with pytest.raises(FaceModelError, match=r"segmenter\.onnx: output .* has shape \(2, 4, 32, 32\).*not a face model"):
        load_face_model(path, "template")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(FaceModelError, match=r"junk\.onnx: not a readable ONNX model"):
        load_face_model(tmp_path / "junk.onnx", "template")
    with pytest.raises(FileNotFoundError, match="missing.onnx: face model file not found"):
        load_face_model(tmp_path / "missing.onnx")


def test_a_face_model_stays_frozen_inside_a_training_module(tmp_path):
    perceptor = load_face_model(_encoder_file(tmp_path), "perceptor", n_layers=1)
    holder = torch.nn.Module()
    holder.perceptor = perceptor
    holder.train()
    assert not perceptor.training and not any(m.training for m in perceptor.modules())
    assert not any(p.requires_grad for p in perceptor.parameters())


def test_safetensors_without_spec_is_a_clear_error(tmp_path):
    save_file({"w": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="bare.safetensors: missing its spec file bare.json"):
        load_face_model(tmp_path / "bare.safetensors")


def test_read_back_templates_are_a_map_of_the_file_that_pickles_as_where_it_lies(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ts = TemplateSet.from_rows([f"p{i}.jpg" for i in range(40)], [f"person{i % 5}" for i in range(40)], vectors)
    write_template_set(tmp_path, "train", ts)
    back = read_template_set(tmp_path, "train", dim=16)
    assert isinstance(back.templates, np.memmap) and np.array_equal(back.templates, vectors)
    sent = pickle.dumps(back)
    assert len(sent) < vectors.nbytes  # the rows are not in the pickle
    again = pickle.loads(sent)
    assert isinstance(again.templates, np.memmap) and np.array_equal(again.templates, vectors)


def test_psnr_and_ssim_equal_scikit_images_on_a_real_photo():
    from skimage import data
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from embedlab.evaluation.image_quality import psnr, ssim

    photo = data.astronaut()[100:164, 150:214] / 255.0
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 0.08, photo.shape), 0, 1)
    as_tensor = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # noqa: E731
    expected = structural_similarity(photo, noisy, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=True)
    assert ssim(as_tensor(photo), as_tensor(noisy)).item() == pytest.approx(expected, abs=1e-6)
    assert psnr(as_tensor(photo), as_tensor(noisy)).item() == pytest.approx(
        peak_signal_noise_ratio(photo, noisy, data_range=1.0), abs=1e-4)
    assert ssim(as_tensor(photo), as_tensor(photo)).item() == pytest.approx(1.0, abs=1e-6)
