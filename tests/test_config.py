"""params.yaml reading, overrides and profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedlab.config import ConfigError, DripStep, apply_overrides, load_params, use_profile

PROJECT = Path(__file__).resolve().parents[1]


def test_project_params_load_with_a_three_step_schedule():
    params = load_params(PROJECT / "params.yaml")
    assert list(params.drip_schedule) == ["s1", "s2", "s3"]
    assert isinstance(params.drip_schedule["s2"], DripStep)
    assert params.drip_schedule["s2"].init_from == "s1"


def test_unknown_parameter_is_an_error_naming_file_and_key(tmp_path):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["drip"]["lerning_rate"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"params.yaml.*drip.*lerning_rate"):
        load_params(path)


@pytest.mark.parametrize("section,key,value,message", [
    ("drip", "qry_augs_intensity", 1.5, "qry_augs_intensity"),
    ("drip", "w_init", "zeros", "w_init"),
    ("runtime", "precision", "fp8", "runtime.precision"),
    ("runtime", "num_workers", -1, "runtime.num_workers"),
    ("runtime", "devices", 0, "runtime.devices"),
    ("tracking", "system_metrics_interval", 0, "tracking.system_metrics_interval"),
])
def test_invalid_values_are_rejected(section, key, value, message):
    params = load_params(PROJECT / "params.yaml")
    with pytest.raises(ConfigError, match=message):
        apply_overrides(getattr(params, section), {key: value})


def test_overrides_skip_none_and_keep_the_rest():
    params = load_params(PROJECT / "params.yaml")
    cfg = apply_overrides(params.drip, {"batch_size": 7, "lr": None})
    assert cfg.batch_size == 7 and cfg.lr == params.drip.lr
    assert cfg.epochs == params.drip.epochs


def test_use_profile_full_replaces_the_schedule_and_keeps_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text())
    use_profile(path, "full")
    params = load_params(path)
    assert params.profile == "full"
    assert params.drip.backbone == "eca_nfnet_l1" and params.drip.img_size == 160
    assert list(params.drip_schedule)[0] == "s50k" and "s1" not in params.drip_schedule
    assert params.drip_schedule["s500k"].qry_augs_intensity == 0.60
    assert params.runtime.num_workers == "auto" and len(params.pipeline.augment) == 11
    assert params.demo_data.n_training == 240  # sections the profile leaves alone stay
    assert "# The one source of parameters" in path.read_text()

    use_profile(path, "demo")  # the values the switch overwrote were kept as profile "demo"
    assert load_params(path) == load_params(PROJECT / "params.yaml")


def test_switching_through_two_profiles_gives_back_the_demo(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text())
    use_profile(path, "demo_full")  # `make demo-full`: the whole GeM matrix of the demo
    params = load_params(path)
    assert params.pipeline.gem_starts == ["imagenet", "scratch"] and params.pipeline.gem == ["big", "bw"]
    assert params.drip == load_params(PROJECT / "params.yaml").drip
    use_profile(path, "full")  # demo_full and demo keep the demo values full overwrites
    use_profile(path, "demo_full")
    assert load_params(path).drip == load_params(PROJECT / "params.yaml").drip
    use_profile(path, "demo")
    assert load_params(path) == load_params(PROJECT / "params.yaml")


def test_use_profile_unknown_name(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text())
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        use_profile(path, "huge")
    assert path.read_text() == (PROJECT / "params.yaml").read_text()


TRAINING_STAGES = {"drip": "drip", "gem": "gem", "triplet_pretrain": "triplet", "triplet_finetune": "triplet",
                   "decoder": "decoder"}


def test_training_stages_depend_on_whole_sections_and_never_on_the_runtime():
    """A stage's DVC params are the sections that shape its model: a new setting is covered
    without editing dvc.yaml, and speed settings (runtime) rerun nothing."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    for name, section in TRAINING_STAGES.items():
        stage = stages[name].get("do", stages[name])
        assert section in stage["params"], name
        assert not any(p == "runtime" or p.startswith("runtime.") for p in stage["params"]), name
    assert "drip_schedule.${key}" in stages["drip"]["do"]["params"]
    assert stages["drip"]["foreach"] == "${drip_schedule}"
    # a phase does not rerun when the other phase's settings change
    assert "triplet_phases.pretrain" in stages["triplet_pretrain"]["params"]
    assert not any(p.startswith("triplet_phases.finetune") for p in stages["triplet_pretrain"]["params"])
    assert "triplet_phases.finetune" in stages["triplet_finetune"]["params"]


def test_runtime_settings_stay_out_of_every_stage_fingerprint_and_params(tiny_project, tiny_faces):
    """Changing a runtime setting keeps a finished run's fingerprint (it re-evaluates, never retrains),
    and no runtime field is a field of a stage's section."""
    import dataclasses

    from embedlab.config import DecoderConfig, DripConfig, GemConfig, RuntimeConfig, TripletConfig

    runtime = {f.name for f in dataclasses.fields(RuntimeConfig)}
    for cls in (DripConfig, GemConfig, TripletConfig, DecoderConfig):
        assert not runtime & {f.name for f in dataclasses.fields(cls)}, cls.__name__

    from embedlab.stages.drip import plan_scheduled_step
    from embedlab.stages.lifecycle import stage_fingerprint

    params = load_params("params.yaml")
    request = plan_scheduled_step(params, "s1")
    request.setup(params)
    faster = dataclasses.replace(params, runtime=dataclasses.replace(
        params.runtime, num_workers=3, precision="bf16", compile=True, inference_batch_size=7))
    key = stage_fingerprint(request, params)
    assert stage_fingerprint(request, faster) == key
    other = dataclasses.replace(params, drip=dataclasses.replace(params.drip, lr=params.drip.lr * 2))
    request.setup(other)
    assert stage_fingerprint(request, other) != key


def test_values_are_checked_against_their_types(tmp_path):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["drip"]["lr"] = "2e-4"  # what PyYAML makes of `lr: 2e-4`
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_params(path).drip.lr == pytest.approx(2e-4)
    for key, value in (("stop_rule", "no"), ("epochs", 2.5), ("batch_size", "big")):
        bad = yaml.safe_load((PROJECT / "params.yaml").read_text())
        bad["drip"][key] = value
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=f"drip.{key}"):
            load_params(path)


def test_bad_gem_and_triplet_settings_name_the_setting(tmp_path):
    path = tmp_path / "params.yaml"
    for section, key, value, message in (("gem", "k", 1, "gem.k"), ("runtime", "devices", 0, "runtime.devices"),
                                         ("triplet", "fake_classes", "each", "triplet.fake_classes"),
                                         ("triplet", "p", 1, "at least 2")):
        bad = yaml.safe_load((PROJECT / "params.yaml").read_text())
        bad[section][key] = value
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message):
            load_params(path)
    bad = yaml.safe_load((PROJECT / "params.yaml").read_text())
    bad["triplet_phases"]["finetune"]["miner"] = "semi-hard"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="miner"):
        load_params(path)


def test_the_full_profile_holds_every_originals_settings(tmp_path):
    """`embedlab use-profile full` gives each system the original's values (docs/real_data.md), with no
    stage's settings left at the demo's."""
    from embedlab.config import use_profile

    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text())
    use_profile(path, "full")
    p = load_params(path)
    assert (p.drip.backbone, p.drip.img_size, p.drip.aug_size, p.drip.batch_size, p.drip.arcface_m,
            p.drip.arcface_s) == ("eca_nfnet_l1", 160, 384, 200, 0.4, 40.0)
    assert p.drip.pretrained == "weights/eca_nfnet_l1_imagenet.pth"
    assert list(p.drip_schedule)[0] == "s50k" and p.drip_schedule["s1500k"].n_imagenet_samples == 500_000
    assert (p.gem.backbone, p.gem.img_size, p.gem.p, p.gem.k, p.gem.epochs, p.gem.iters, p.gem.lr) == \
        ("resnet50", 256, 32, 4, 25, 8000, 3.5e-4)
    assert p.gem.last_stride_1 and p.gem.waveblock and (p.gem.proj_hidden, p.gem.proj_dim) == (4096, 8192)
    assert (p.triplet.backbone, p.triplet.img_size, p.triplet.p, p.triplet.k, p.triplet.margin) == \
        ("vit_base_patch16_224", 224, 16, 4, 0.1)
    assert (p.triplet_phases["pretrain"].lr, p.triplet_phases["finetune"].lr) == (1e-4, 1e-6)
    assert (p.decoder.output_size, p.decoder.width, p.decoder.batch_size, p.decoder.perceptual_weight,
            p.decoder.perceptor_layers, p.decoder.fmr) == (112, 1.0, 200, 11.0, 4, 1e-6)
    assert p.templates.model.endswith("w600k_r50.onnx") and p.evaluate.train_descriptors == 100_000
    assert len(p.pipeline.augment) == 11 and p.augment.every == 10
    # The GeM matrix: every start on all 11 sets, the 256-d distilled descriptor; the demo's scratch start is gone.
    assert p.pipeline.gem == p.pipeline.augment and p.pipeline.gem_starts == ["imagenet", "byol"]
    assert sorted(p.gem_starts) == ["byol", "imagenet"] and p.gem.descriptor_dim == 256
    assert p.gem_starts["byol"].apply(p.gem).pretrained == "weights/resnet152_byol.pth"
    assert p.gem_starts["imagenet"].apply(p.gem).pretrained == "weights/resnet50_imagenet.pth"


def test_gem_starts_are_checked_and_applied(tmp_path):
    path = tmp_path / "params.yaml"
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    p = load_params(PROJECT / "params.yaml")
    assert p.gem_starts["scratch"].apply(p.gem).pretrained is None
    assert p.gem_starts["imagenet"].apply(p.gem) == p.gem
    params["pipeline"]["gem_starts"] = ["imagenet", "byol"]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"pipeline.gem_starts: \['byol'\] not defined in gem_starts"):
        load_params(path)
    params["pipeline"]["gem_starts"] = ["imagenet"]
    params["gem_starts"]["scratch"] = {"scratch": True, "pretrained": "w.pth"}
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="scratch: true cannot also name pretrained weights"):
        load_params(path)


def test_a_missing_pretrained_file_names_the_file_to_provide(tmp_path):
    from embedlab.models.pretrained import PretrainedWeightsError, resolve_weights_path

    with pytest.raises(PretrainedWeightsError, match=r"weights/resnet50_imagenet.pth: pretrained weights file not "
                                                     r"found; save the backbone's weights there"):
        resolve_weights_path("weights/resnet50_imagenet.pth")
