"""The eleven augmentation recipes of params.yaml: format, checks, and their
visible effect on real photos (docs/originals/gem.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data

from embedlab.augment import AugContext, OverlayPool, get_transform
from embedlab.augment.recipes import RecipeAugmenter, Step, format_recipe, load_recipes, op_arguments
from embedlab.cli import main
from embedlab.config import AugmentConfig, ConfigError, RuntimeConfig, load_params

PROJECT = Path(__file__).resolve().parents[1]
SIZE = 64
ELEVEN = {"big", "bw", "blur", "blur_bw", "color_p4", "color_p4_bw", "dark", "ff", "ff_bw", "opa", "u"}


@pytest.fixture(scope="module")
def cfg() -> AugmentConfig:
    return load_params(PROJECT / "params.yaml").augment


@pytest.fixture(scope="module")
def recipes(cfg):
    return load_recipes(cfg.base, cfg.recipes, SIZE)


def _photos(*fns) -> list[Image.Image]:
    return [Image.fromarray(f()).convert("RGB").resize((96, 96), Image.BILINEAR) for f in fns]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return _photos(data.astronaut, data.chelsea, data.coffee, data.rocket)


def _run(recipe, photos, ctx, per_photo=12, seed=0):
    """(image, ops that fired) for every photo and seed."""
    aug, out = RecipeAugmenter(recipe, ctx), []
    for i, ph in enumerate(photos):
        for s in range(per_photo):
            trace: list[str] = []
            out.append((aug(ph, np.random.default_rng(seed + 1000 * i + s), trace), trace))
    return out


# --- what params.yaml holds ---------------------------------------------------------


def test_params_hold_the_eleven_recipes_with_the_original_settings(recipes):
    assert set(recipes) == ELEVEN
    big = {s.op: s for s in recipes["big"].steps}
    assert [s.op for s in recipes["big"].steps][:2] == ["random_resized_crop", "rotate"]
    assert big["random_resized_crop"].args["scale"] == (0.2, 1.0) and big["random_resized_crop"].p == 1
    for op in ("rotate", "pixelization", "shuffle_pixels", "perspective", "pad", "underlay"):
        assert big[op].p == 0.3, op
    assert big["color_jitter"].p == 0.8
    assert dict(big["color_jitter"].args) == {"brightness": 0.5, "contrast": 0.5, "saturation": 0.3, "hue": 0.2}
    assert big["blur"].args["sigma"] == pytest.approx((0.1 / 256, 2 / 256))
    assert big["grayscale"].p == 0.3 and big["hflip"].p == 0.5 and big["emoji"].p == 0.3
    assert [s.p for s in recipes["big"].steps if s.op == "text"] == [0.3, 0.3]
    assert big["overlay"].p == 0.2 and big["overlay"].args["factor"] == (2.5, 3.5)
    assert recipes["big"].steps[-1] == Step("resize", 1.0, {"size": SIZE})


def test_each_variant_changes_the_base_as_the_original_did(recipes):
    def step(name, op):
        return next(s for s in recipes[name].steps if s.op == op)

    assert step("blur", "blur").p == 0.3 and step("blur", "blur").args["sigma"] == pytest.approx((5 / 256, 20 / 256))
    assert recipes["color_p4"].steps[0] == Step("colorize", 0.4, {})
    assert step("dark", "brightness").p == 0.5 and step("dark", "brightness").args["factor"] == (0.1, 0.5)
    assert step("opa", "opacity").p == 0.4 and step("opa", "opacity").args["level"] == (0.2, 1.0)
    assert step("u", "underlay").p == 0.4 and step("u", "underlay").args["scale"] == (0.2, 0.3)
    assert {n for n, r in recipes.items() if r.grayscale} == {"bw", "blur_bw", "color_p4_bw", "ff_bw"}
    assert {n for n, r in recipes.items() if r.faces} == {"ff", "ff_bw"}
    for bw in ("blur_bw", "color_p4_bw", "ff_bw"):  # a _bw set is its colour set plus the closing grayscale
        assert recipes[bw].steps[:-1] == recipes[bw[:-3]].steps and recipes[bw].steps[-1].op == "grayscale"


def test_show_prints_the_effective_steps(capsys):
    assert main(["augment", "--params", str(PROJECT / "params.yaml"), "--recipe", "blur_bw", "--size", "96",
                 "--show"]) == 0
    shown = capsys.readouterr().out
    assert "recipe blur_bw (extends blur, grayscale" in shown
    assert "random_resized_crop" in shown and "size=96" in shown and "sigma=(0.01953, 0.07812)" in shown
    assert shown.rstrip().splitlines()[-1].split()[1] == "grayscale"


def test_dvc_stage_params_cover_every_setting_that_shapes_a_set():
    stage = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["augment"]
    assert stage["foreach"] == "${pipeline.augment}" and "--recipe ${item}" in stage["do"]["cmd"]
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    params = stage["do"]["params"]
    # The whole augment section (a recipe may extend another), or each of its fields; the worker
    # count (runtime.augment_workers) changes how fast a set is written, never its images.
    listed = fields if "augment" in params else {p.split(".", 1)[1] for p in params if p.startswith("augment.")}
    assert listed == fields
    assert all(p == "augment" or p.startswith("augment.") for p in params), params
    assert not {"workers", "augment_workers"} & fields and "augment_workers" in vars(RuntimeConfig())
    assert stage["do"]["outs"] == [{"${augment.out}/${item}": {"persist": True}}]


# --- checks before any work -----------------------------------------------------------


def _bad(cfg, edit) -> str:
    base, recipes = yaml.safe_load(yaml.safe_dump(cfg.base)), yaml.safe_load(yaml.safe_dump(cfg.recipes))
    edit(base, recipes)
    with pytest.raises(ConfigError) as info:
        load_recipes(base, recipes, SIZE)
    return str(info.value)


def test_bad_recipes_are_errors_naming_the_setting(cfg):
    msg = _bad(cfg, lambda b, r: r["blur"]["replace"]["blur"].update(p=1.5))
    assert msg == "params.yaml: augment.recipes.blur.replace.blur.p: 1.5 is outside [0, 1]"
    msg = _bad(cfg, lambda b, r: b[1].update(op="rotat"))
    assert msg.startswith("params.yaml: augment.base[1].op: unknown op 'rotat'; known:") and "rotate" in msg
    msg = _bad(cfg, lambda b, r: b[1]["args"].update(angel=3))
    assert "augment.base[1].args.angel: rotate has no argument 'angel'" in msg and "angle, crop_border" in msg
    msg = _bad(cfg, lambda b, r: r["u"]["replace"]["underlay"]["args"].update(scale=[0.3, 0.2]))
    assert "augment.recipes.u.replace.underlay.args.scale: range [0.3, 0.2] has low > high" in msg
    msg = _bad(cfg, lambda b, r: r["dark"]["last"][0].update(prob=0.5))
    assert "augment.recipes.dark.last[0]: unknown key(s) ['prob']" in msg
    msg = _bad(cfg, lambda b, r: r["bw"].update(extends="bigg"))
    assert "augment.recipes.bw.extends: unknown recipe 'bigg'" in msg
    msg = _bad(cfg, lambda b, r: r["blur"].update(extends="blur_bw"))
    assert "is a cycle" in msg
    msg = _bad(cfg, lambda b, r: r["u"].update(replace={"sharpen": {"p": 0.1}}))
    assert "augment.recipes.u.replace.sharpen: the chain has no 'sharpen' step" in msg


def test_unknown_recipe_lists_the_known_ones(capsys):
    assert main(["augment", "--params", str(PROJECT / "params.yaml"), "--recipe", "bigg", "--show"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'bigg'" in err and "big, blur, blur_bw, bw" in err


def test_every_op_argument_is_checked_against_its_signature():
    assert op_arguments("underlay") == ["scale"] and op_arguments("hflip") == []
    assert "crop_border" in op_arguments("rotate")


# --- the new ops ------------------------------------------------------------------------


def _solid(color, size=(80, 60)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_paste_into_puts_the_image_into_another_at_the_given_area(photos):
    ctx = AugContext(OverlayPool.from_images([_solid((255, 0, 255))]))
    for area in (0.05, 0.25):
        out = np.asarray(get_transform("paste_into")(photos[0], np.random.default_rng(0), ctx, area=area))
        ours = 1 - np.all(out == (255, 0, 255), axis=-1).mean()
        assert abs(ours - area) < 0.02 and out.shape[0] * out.shape[1] == pytest.approx(96 * 96, rel=0.05)


def test_underlay_pastes_another_picture_shrunk_to_scale_of_its_sides_onto_ours(photos):
    """The original generator's code: the other picture's patch lands in our image, which keeps its size."""
    ctx = AugContext(OverlayPool.from_images([_solid((255, 0, 255), size=(200, 100))]))
    ours = np.asarray(photos[0])
    out = np.asarray(get_transform("underlay")(photos[0], np.random.default_rng(0), ctx, scale=0.1))
    assert out.shape == ours.shape
    ys, xs = np.nonzero(np.all(out == (255, 0, 255), axis=-1))
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (10, 20)  # 0.1 of 100 × 200
    changed = np.any(out != ours, axis=-1)
    assert changed.sum() == 10 * 20 and changed[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()


def test_overlay_pastes_the_unchanged_image_onto_an_enlarged_other(photos):
    ctx = AugContext(OverlayPool.from_images([_solid((255, 0, 255))]))
    out = get_transform("overlay")(photos[1], np.random.default_rng(0), ctx, factor=3.0)
    assert out.size == (288, 288)
    arr = np.asarray(out)
    mask = ~np.all(arr == (255, 0, 255), axis=-1)
    ys, xs = np.nonzero(mask)
    window = arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert np.array_equal(window, np.asarray(photos[1]))


def test_resize_is_exact_in_pixels(photos):
    out = get_transform("resize")(photos[2].crop((0, 0, 90, 40)), np.random.default_rng(0), AugContext(), size=50)
    assert out.size == (50, 50)


# --- each recipe, visibly, on real photos ------------------------------------------------


def test_big_gives_new_views_at_the_set_size(recipes, photos):
    aug = RecipeAugmenter(recipes["big"], AugContext(OverlayPool.from_images(photos)))
    outs = [aug(photos[0], np.random.default_rng(s)) for s in range(8)]
    assert all(o.size == (SIZE, SIZE) and o.mode == "RGB" for o in outs)
    assert len({o.tobytes() for o in outs}) == 8
    again = aug(photos[0], np.random.default_rng(3))
    assert again.tobytes() == outs[3].tobytes()
    assert aug.anchor(photos[0]).size == (SIZE, SIZE)


@pytest.mark.parametrize("name", ["bw", "blur_bw", "color_p4_bw", "ff_bw"])
def test_black_and_white_sets_are_grayscale_anchor_included(name, recipes, photos):
    aug = RecipeAugmenter(recipes[name], AugContext(OverlayPool.from_images(photos)))
    for img in [aug.anchor(photos[0])] + [aug(ph, np.random.default_rng(s)) for s, ph in enumerate(photos * 3)]:
        rgb = np.asarray(img.convert("RGB"))
        assert img.size == (SIZE, SIZE)
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


def _high_freq(img: Image.Image) -> float:
    g = np.asarray(img.convert("L")).astype(np.float32)
    return float(np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean())


@pytest.mark.parametrize("name", ["blur", "blur_bw"])
def test_blur_sets_hold_heavily_blurred_images(name, recipes, photos):
    ctx = AugContext(OverlayPool.from_images(photos))
    big = [_high_freq(img) for img, _ in _run(recipes["big"], photos, ctx)]
    blurred = [_high_freq(img) for img, trace in _run(recipes[name], photos, ctx) if "blur" in trace]
    assert 6 <= len(blurred) <= 30  # p = 0.3 of 48
    assert np.median(blurred) < 0.5 * np.median(big)


def test_dark_darkens_half_of_the_images(recipes, photos):
    ctx = AugContext(OverlayPool.from_images(photos))
    pairs = zip(_run(recipes["big"], photos, ctx), _run(recipes["dark"], photos, ctx))
    fired = 0
    for (big, _), (dark, trace) in pairs:  # brightness is the last step: the same view, darker
        if "brightness" in trace:
            fired += 1
            assert np.asarray(dark).mean() < 0.55 * np.asarray(big).mean() + 2
        else:
            assert dark.tobytes() == big.tobytes()
    assert 14 <= fired <= 34


def _colored_share(img: Image.Image) -> float:
    hsv = cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2HSV)
    return float(((hsv[..., 1] > 50) & (hsv[..., 2] > 20)).mean())


def test_color_p4_tints_black_and_white_photos(recipes):
    gray = _photos(data.camera, data.moon, data.coins, data.brick, data.grass, data.gravel)
    ctx = AugContext(OverlayPool.from_images(gray))
    # Colour jitter cannot colour a grey photo; PIL's colorize maps its luma onto two random colours.
    big = np.mean([_colored_share(img) for img, _ in _run(recipes["big"], gray, ctx, per_photo=10)])
    tinted = np.mean([_colored_share(img) for img, _ in _run(recipes["color_p4"], gray, ctx, per_photo=10)])
    assert tinted > 1.8 * big and tinted > big + 0.08


def test_opa_blends_another_image_over_the_whole_frame(recipes, photos):
    ctx = AugContext(OverlayPool.from_images(photos))
    changed = []
    for (big, _), (opa, trace) in zip(_run(recipes["big"], photos, ctx), _run(recipes["opa"], photos, ctx)):
        if "opacity" in trace:  # the last step: the same view, seen through another image
            changed.append(np.any(np.asarray(opa) != np.asarray(big), axis=-1).mean())
        else:
            assert opa.tobytes() == big.tobytes()
    assert 10 <= len(changed) <= 30
    assert np.mean(np.array(changed) > 0.8) >= 0.7  # full frame, unlike an emoji or a text


def test_ff_adds_face_classes(recipes):
    assert recipes["ff"].faces and recipes["ff"].steps == recipes["big"].steps
    assert "+ face classes" in format_recipe(recipes["ff_bw"])


def test_wide_blur_matches_the_direct_gaussian(photos):
    """The blur recipes' σ 5-20 px is computed at a lower resolution: the same blur, faster."""
    from embedlab.augment._albu import fblur, fpixel
    from embedlab.augment.degrade import _wide_gaussian

    arr = np.ascontiguousarray(np.asarray(photos[0].resize((256, 256))))
    assert _wide_gaussian(arr, 2.0) is None  # small σ: the direct convolution
    for s in (5.0, 12.0, 20.0):
        direct = fpixel().separable_convolve(arr, fblur().create_gaussian_kernel_1d(s)).astype(float)
        wide = _wide_gaussian(arr, s).astype(float)
        m = int(3 * s)
        assert np.abs(direct - wide)[m:-m, m:-m].mean() < 0.6 and np.abs(direct - wide).mean() < 2.0
