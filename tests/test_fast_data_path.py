"""The fast data path keeps the look of the Pillow path it replaced (issue 21), on real photos.

- resizing: Pillow's ``BILINEAR`` within 1 grey level (reductions, enlargements, mixed, grey, RGBA);
- JPEG draft-mode decoding: the image at the size asked, close to a full decode resized;
- the rewritten ops (rotate with a cropped border, stripes) against their Pillow/numpy formulation;
- uint8 batches normalised by the model give the descriptors of float batches normalised on the CPU.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from embedlab.augment import get_transform
from embedlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8, resize_square, to_uint8
from embedlab.images import load_rgb
from embedlab.resize import resize_array, resize_image


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(f()).convert("RGB") for f in (data.astronaut, data.chelsea, data.coffee, data.rocket)]


def _diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))


@pytest.mark.parametrize("size", [(160, 160), (384, 384), (300, 280), (97, 51), (640, 700), (900, 800), (511, 300)])
def test_resize_matches_pillows_bilinear_within_one_grey_level(photos, size):
    for photo in photos:
        for img in (photo, photo.convert("L"), photo.convert("RGBA")):
            ours = resize_image(img, size)
            assert ours.size == size and ours.mode == img.mode
            assert _diff(ours, img.resize(size, Image.BILINEAR)).max() <= 1, (img.mode, photo.size, size)


def test_resize_of_a_window_resizes_only_the_window(photos):
    box = (40, 30, 300, 250)
    ours = resize_image(photos[0], (100, 90), box=box)
    assert _diff(ours, photos[0].crop(box).resize((100, 90), Image.BILINEAR)).max() <= 1
    assert resize_array(np.asarray(photos[0]), photos[0].size) is not np.asarray(photos[0])  # always a new array


def test_to_uint8_is_resize_square_as_a_planar_tensor(photos):
    for photo in photos:
        for size in (64, 160, 700):  # reduced, and enlarged
            tensor = to_uint8(photo, size)
            assert tensor.dtype == torch.uint8 and tensor.shape == (3, size, size) and tensor.is_contiguous()
            assert _diff(tensor.permute(1, 2, 0).numpy(), resize_square(photo, size)).max() <= 1


def test_draft_decoding_reads_a_large_jpeg_at_the_size_asked(tmp_path: Path, photos):
    path = tmp_path / "large.jpg"
    photos[0].resize((1024, 768), Image.BICUBIC).save(path, quality=90)
    full = load_rgb(path)
    assert full.size == (1024, 768)
    assert load_rgb(path, at_least=384).size == (512, 384)  # half scale: both sides still >= 384
    assert load_rgb(path, at_least=160).size == (256, 192)  # quarter scale
    assert load_rgb(path, at_least=800).size == (1024, 768)  # no smaller scale holds 800 px
    for size in (384, 160):
        drafted = resize_square(load_rgb(path, at_least=size), size)
        assert _diff(drafted, resize_square(full, size)).mean() < 1.5  # DCT scaling vs decode-then-reduce


def test_draft_decoding_leaves_other_formats_and_small_jpegs_whole(tmp_path: Path, photos):
    png = tmp_path / "a.png"
    photos[1].save(png)
    assert load_rgb(png, at_least=64).size == photos[1].size
    small = io.BytesIO()
    photos[1].resize((500, 400)).save(small, "JPEG")
    (tmp_path / "s.jpg").write_bytes(small.getvalue())
    assert load_rgb(tmp_path / "s.jpg", at_least=256).size == (500, 400)


def _pillow_rotate_crop(img: Image.Image, a: float) -> Image.Image:
    """The op as it was: Pillow's expanding rotation, the largest black-free rectangle cut out and resized."""
    from embedlab.augment.geometric import _max_valid_rect

    w, h = img.size
    big = img.rotate(a, resample=Image.BILINEAR, expand=True)
    rw, rh = _max_valid_rect(w, h, math.radians(a))
    cx, cy, m = big.width / 2, big.height / 2, 0 if a % 90 == 0 else 1
    return big.resize((w, h), Image.BILINEAR, box=(cx - rw / 2 + m, cy - rh / 2 + m, cx + rw / 2 - m, cy + rh / 2 - m))


def test_rotate_with_a_cropped_border_matches_pillows_rotate_crop_resize(photos):
    rotate = get_transform("rotate")
    for i, photo in enumerate(photos):
        img = photo.resize((384, 320))
        for angle in (-75.0, -20.0, 7.5, 33.0, 90.0):
            ours = rotate(img, np.random.default_rng(i), None, angle=angle)
            diff = _diff(ours, _pillow_rotate_crop(img, angle))
            # One interpolation instead of two: a little sharper, the same geometry.
            assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16, (i, angle, diff.mean())
        assert np.array_equal(np.asarray(rotate(img, None, None, angle=180.0)), np.asarray(img)[::-1, ::-1])


def test_stripes_paint_the_bands_of_the_numpy_formulation(photos):
    """The same random draws as the op; the float-mod mask and float blend it replaced, pixel by pixel."""
    stripes = get_transform("stripes")
    img = photos[2].resize((384, 256))
    for seed in range(6):
        ours = np.asarray(stripes(img, np.random.default_rng(seed), None))
        rng = np.random.default_rng(seed)
        w, h = img.size
        lw = max(1.0, rng.uniform(0.01, 0.05) * min(w, h))
        period = lw / min(0.95, max(0.05, rng.uniform(0.2, 0.6)))
        theta = math.radians(rng.uniform(-90.0, 90.0))
        alpha, color, dashed = rng.uniform(0.3, 1.0), rng.integers(0, 256, size=3), rng.random() < 0.3
        x, y = np.arange(w)[None, :], np.arange(h)[:, None]
        mask = np.mod(x * math.cos(theta) + y * math.sin(theta) + rng.uniform(0, period), period) < lw
        if dashed:
            mask &= np.mod(-x * math.sin(theta) + y * math.cos(theta), 4 * lw) < 2.5 * lw
        a = (mask * alpha)[..., None]
        expected = np.round(np.asarray(img) * (1 - a) + color * a).astype(np.uint8)
        differ = _diff(ours, expected).max(axis=-1) > 1
        assert differ.mean() < 0.01, (seed, differ.mean())  # band edges only, float32 rounding


def test_uint8_batches_give_the_descriptors_of_float_batches(photos):
    from embedlab.models.backbone import DescriptorModel, DescriptorSpec
    from embedlab.models.face_encoder import FaceEncoder, FaceEncoderSpec
    from embedlab.models.gem_net import GemNet, GemNetSpec

    torch.manual_seed(0)
    pixels = torch.stack([to_uint8(p, 64) for p in photos])
    # The CPU arithmetic of the float path the loaders used before: (x - 255·mean) / (255·std) in float32.
    mean = np.asarray(IMAGENET_MEAN, np.float32) * 255.0
    std = np.asarray(IMAGENET_STD, np.float32) * 255.0
    floats = torch.from_numpy(np.stack([((np.asarray(p.permute(1, 2, 0), np.float32) - mean) / std).transpose(2, 0, 1)
                                        for p in pixels]))
    assert torch.equal(normalize_uint8(pixels), floats)
    models = [DescriptorModel(DescriptorSpec("test_resnet", 16, 3.0, 64)),
              GemNet(GemNetSpec(backbone="test_resnet", img_size=64, proj_hidden=32, proj_dim=32, waveblock=False)),
              FaceEncoder(FaceEncoderSpec(backbone="vit_tiny_patch16_224", img_size=64, patch_size=16, depth=1))]
    for model in models:
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(pixels), model(floats)), type(model).__name__


def test_loader_workers_run_one_opencv_and_one_torch_thread_after_the_parent_used_opencvs_pool():
    """A forked worker that changed OpenCV's thread count itself waited forever on the parent's pool;
    the parent sets it before forking, and the workers inherit one thread."""
    code = """
import cv2, numpy as np, torch
from torch.utils.data import DataLoader, Dataset
from embedlab.devices import loader_options
cv2.setNumThreads(4)
for _ in range(3):
    cv2.resize(np.zeros((1500, 1500, 3), np.uint8), (2500, 2500))  # the parent's OpenCV pool is running
class Threads(Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.tensor([cv2.getNumThreads(), torch.get_num_threads()])
batches = DataLoader(Threads(), batch_size=2, **loader_options(2, False, None, torch.device("cpu")))
print(sorted({tuple(row.tolist()) for batch in batches for row in batch}))
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[(1, 1)]"
