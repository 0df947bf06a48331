"""A recipe's augmentation intensity (augment.recipes.<name>.intensity) and the GeM sweep over it
(`augment_intensity`): each trial generates its own small set at the sampled intensity and trains on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from PIL import Image
from skimage import data

from conftest import PROJECT, tiny_params
from embedlab.augment import AugContext, OverlayPool, get_transform
from embedlab.augment.recipes import SIZED_OPS, Step, load_recipes, op_arguments, parse_step
from embedlab.augment.registry import NEUTRAL
from embedlab.config import ConfigError, load_params
from embedlab.stages.augment import run_augment
from embedlab.sweep.best import set_param_command_from, write_best_params
from embedlab.sweep.runner import SweepRequest, plan_sweep, run_sweep
from embedlab.sweep.space import with_values

SIZE = 64
CLOSING = 1  # big's chain closes with one resize (not scaled: every image must come out at the set's size)


@pytest.fixture(scope="module")
def augment():
    return load_params(PROJECT / "params.yaml").augment


def _recipes(augment, **extra):
    return load_recipes(augment.base, {**augment.recipes, **extra}, SIZE)


# --- the recipe's intensity -------------------------------------------------------------------------

def test_intensity_scales_every_probability_and_moves_declared_magnitudes_toward_neutral(augment):
    recipes = _recipes(augment, soft={"intensity": 0.5}, soft_bw={"extends": "soft", "grayscale": True},
                       none={"intensity": 0.0})
    big, soft = recipes["big"], recipes["soft"]
    assert soft.intensity == 0.5 and recipes["soft_bw"].intensity == 0.5  # inherited, like grayscale
    assert [s.op for s in soft.steps] == [s.op for s in big.steps]
    for full, half in zip(big.steps[:-CLOSING], soft.steps[:-CLOSING]):
        assert half.p == pytest.approx(0.5 * full.p), full.op
    assert soft.steps[-1] == big.steps[-1] and soft.steps[-1].op == "resize"  # the closing resize still always fires
    by_op = {s.op: s.args for s in soft.steps}
    assert by_op["rotate"]["angle"] == pytest.approx((-25, 25))  # neutral 0
    assert by_op["random_resized_crop"]["scale"] == pytest.approx((0.6, 1.0))  # neutral 1: (0.2, 1) halfway to 1
    assert by_op["pixelization"]["ratio"] == pytest.approx((0.55, 1.0))
    assert by_op["color_jitter"] == pytest.approx({"brightness": 0.25, "contrast": 0.25, "saturation": 0.15,
                                                   "hue": 0.1})
    assert by_op["text"]["size"] == (0.0, 1.0) and by_op["text"]["n_chars"] == (0, 20)  # no neutral: as written
    assert by_op["text"]["opacity"] == pytest.approx((0.0, 0.5))
    assert by_op["underlay"] == {"scale": (0.04, 0.1)} and by_op["rotate"]["crop_border"] is False
    # At 0 nothing fires but the closing resize.
    assert [s.op for s in recipes["none"].steps if s.p > 0] == ["resize"]


def test_intensity_one_is_the_recipe_as_written(augment):
    recipes = _recipes(augment, same={"intensity": 1.0}, undo={"extends": "soft", "intensity": 1.0},
                       soft={"intensity": 0.3})
    # The steps as params.yaml writes them, untouched by any arithmetic (so the images are today's, byte for byte)
    written = [parse_step(raw, "base") for raw in augment.base]
    for name in ("big", "same", "undo"):
        steps = recipes[name].steps[:-CLOSING]
        unsized = [Step(s.op, s.p, {k: v for k, v in s.args.items() if not (k == "size" and s.op in SIZED_OPS)})
                   for s in steps]  # the set's size, filled in
        assert unsized == written, name
    assert "intensity" not in recipes["same"].to_dict()  # a set's fingerprint gets no new key at 1
    assert recipes["soft"].to_dict()["intensity"] == 0.3


@pytest.mark.parametrize("value", [1.5, -0.1, "high", True, None])
def test_a_bad_intensity_is_an_error_naming_it(augment, value):
    with pytest.raises(ConfigError, match=r"params.yaml: augment.recipes.x.intensity"):
        _recipes(augment, x={"intensity": value})


def test_each_neutral_value_makes_its_op_change_nothing():
    """The values intensity scales toward are real identities (on a square image), of real arguments."""
    img = Image.fromarray(data.astronaut()).resize((96, 96))
    ctx = AugContext(pool=OverlayPool([]))
    declared = {op: neutral for op, neutral in NEUTRAL.items() if neutral}
    assert {"rotate", "crop", "blur", "color_jitter", "opacity"} <= set(declared)
    for op, neutral in declared.items():
        assert set(neutral) <= set(op_arguments(op)), op
        out = get_transform(op)(img, np.random.default_rng(0), ctx, **neutral)
        assert np.array_equal(np.asarray(out), np.asarray(img)), op


def _images(root: Path) -> dict[str, bytes]:
    """The set's images by key, read from its store."""
    from embedlab.data.shards import ImageStore

    store = ImageStore(root)
    return {store.key(i): store[i] for i in range(len(store))}


def _shards(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*"))}


def test_generating_at_intensity_one_gives_byte_identical_sets(tmp_path, tiny_demo):
    """The same recipe written without intensity and with 1.0 makes the same bytes; 0.4 makes others."""
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["augment"].update(source=str(tiny_demo / "disc" / "training"), classes=4, per_class=3, size=48, seed=2)
    raw["runtime"]["augment_workers"] = 1
    folders = {}
    for name, big in {"as_written": {}, "one": {"intensity": 1.0}, "soft": {"intensity": 0.4}}.items():
        raw["augment"]["recipes"]["big"] = big
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        folders[name] = run_augment(load_params(path), "big", out=tmp_path / name, progress=False)[1]
    assert len(_shards(folders["as_written"])) >= 1
    assert _shards(folders["one"]) == _shards(folders["as_written"])
    assert _shards(folders["soft"]) != _shards(folders["as_written"])
    written, soft = _images(folders["as_written"]), _images(folders["soft"])
    assert written.keys() == soft.keys() and len(written) == 4 * 3
    anchors = [k for k in written if k.endswith("_0")]
    assert all(written[k] == soft[k] for k in anchors)  # the anchor is the resized source at any intensity
    assert all(written[k] != soft[k] for k in written if k not in anchors)


# --- the GeM sweep over it -----------------------------------------------------------------------------

INTENSITY_SPACE = {"augment_intensity": {"low": 0.2, "high": 1.0}}


def _gem_sweep(project: Path, space: dict, **gem_stage) -> None:
    """The tiny params with a gem_stage sweep: small per-trial sets, one short epoch, cheap scoring."""
    params = tiny_params()
    params["evaluate"].update(train_descriptors=0)
    params["sweep"] = {"pruner": "none", "gem_stage": {"recipe": "big", "epochs": 1, "classes": 6, "per_class": 3,
                                                       "space": space, **gem_stage}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def test_augment_intensity_is_the_recipes_own_setting_checked_before_any_trial(tiny_project: Path):
    _gem_sweep(tiny_project, {**INTENSITY_SPACE, "lr": {"low": 1.0e-4, "high": 1.0e-3, "log": True}})
    plan = plan_sweep(load_params(), SweepRequest("gem_stage", n_trials=2))  # no pipeline set needed
    assert {d.key: d.knob.path for d in plan.dimensions} == {
        "augment_intensity": ("augment", "recipes", "big", "intensity"), "lr": ("gem", "lr")}
    assert not Path("data/augmented/big").exists()
    # A trial's params: the recipe at that intensity (a recipe left empty, `big:`, too).
    trial = with_values(load_params(), {("augment", "recipes", "big", "intensity"): 0.3})
    assert load_recipes(trial.augment.base, trial.augment.recipes, 48)["big"].intensity == 0.3
    # The best value is the pipeline's setting: `dvc exp run` regenerates the full set at it.
    best = optuna.trial.create_trial(params={"augment_intensity": 0.6}, value=0.5, distributions={
        "augment_intensity": optuna.distributions.FloatDistribution(0.2, 1.0)})
    tree = write_best_params(tiny_project / "best.yaml", best, plan.knobs, "s", "uAP")
    assert tree == {"augment": {"recipes": {"big": {"intensity": 0.6}}}}
    assert set_param_command_from(tree) == "dvc exp run --set-param augment.recipes.big.intensity=0.6"

    for space, settings, message in [
        ({"augment_intensity": {"low": 0.5, "high": 1.5}}, {},
         "sweep.gem_stage.space.augment_intensity: 1.5 is not a usable value (params.yaml: "
         "augment.recipes.big.intensity must be in [0, 1], got 1.5)"),
        (INTENSITY_SPACE, {"recipe": "elsewhere"},
         "sweep.gem_stage.space.augment_intensity: the trials' set 'elsewhere' is not a recipe of augment.recipes"),
        (INTENSITY_SPACE, {"per_class": 0}, "sweep.gem_stage.per_class: must be at least 1, got 0"),
    ]:
        _gem_sweep(tiny_project, space, **settings)
        with pytest.raises(ConfigError) as err:
            plan_sweep(load_params(), SweepRequest("gem_stage", n_trials=2))
        assert message in str(err.value)
    # Without the key a trial trains on the pipeline's set, as before: it must exist.
    _gem_sweep(tiny_project, {"lr": {"low": 1.0e-4, "high": 1.0e-3}})
    with pytest.raises(FileNotFoundError, match="embedlab augment --recipe big"):
        plan_sweep(load_params(), SweepRequest("gem_stage", n_trials=2))


@pytest.mark.slow
def test_each_trial_of_an_intensity_sweep_trains_on_its_own_set(tiny_project: Path):
    _gem_sweep(tiny_project, INTENSITY_SPACE)
    storage = f"sqlite:///{tiny_project / 'optuna.db'}"
    study = optuna.create_study(study_name="aug", storage=storage, direction="maximize")
    for value in (0.25, 0.9):
        study.enqueue_trial({"augment_intensity": value})
    result = run_sweep(load_params(), SweepRequest("gem_stage", n_trials=2, study="aug"))
    trials = optuna.load_study(study_name="aug", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2

    sets = {}
    for t in trials:
        folder = Path(f"models/sweeps/aug/trial_{t.number:04d}/data/big")
        fingerprint = json.loads((folder / "fingerprint.json").read_text())["settings"]
        assert fingerprint["recipe"]["intensity"] == t.params["augment_intensity"]
        assert (fingerprint["classes"], fingerprint["per_class"]) == (6, 3)  # the sweep's small set
        sets[t.params["augment_intensity"]] = _images(folder)
        assert list(Path(f"models/sweeps/aug/trial_{t.number:04d}").rglob("descriptor_model.safetensors"))
    soft, strong = sets[0.25], sets[0.9]
    assert soft.keys() == strong.keys() and len(soft) == 6 * 3
    assert sum(soft[k] != strong[k] for k in soft) == 6 * 2  # every augmentation differs, no anchor does
    assert not Path("data/augmented").exists() and not Path("models/gem").exists()  # the pipeline's: untouched

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = client.get_run(result["parent_run_id"]).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    logged = {int(r.data.params["optuna.trial_number"]): r.data.params for r in runs}
    for t in trials:
        assert float(logged[t.number]["augment_intensity"]) == t.params["augment_intensity"]
        assert logged[t.number]["gem.data"] == f"models/sweeps/aug/trial_{t.number:04d}/data/big"
    best = yaml.safe_load(Path("reports/sweeps/aug/best_params.yaml").read_text())
    assert best == {"augment": {"recipes": {"big": {"intensity": result["best_params"]["augment_intensity"]}}}}
