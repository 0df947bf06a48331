"""params.yaml reading, overrides and profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedlab.config import ConfigError, DripStep, apply_overrides, load_params, use_profile

PROJECT = Path(__file__).resolve().parents[1]


def test_project_params_load_with_a_three_step_schedule():
    params = load_params(PROJECT / "params.yaml")
    assert list(params.drip.schedule) == ["s1", "s2", "s3"]
    assert isinstance(params.drip.schedule["s2"], DripStep)
    assert params.drip.schedule["s2"].init_from == "s1"


def test_unknown_parameter_is_an_error_naming_file_and_key(tmp_path):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["drip"]["lerning_rate"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"params.yaml.*drip.*lerning_rate"):
        load_params(path)


@pytest.mark.parametrize("key,value,message", [
    ("qry_augs_intensity", 1.5, "qry_augs_intensity"),
    ("w_init", "zeros", "w_init"),
    ("precision", "fp8", "precision"),
])
def test_invalid_values_are_rejected(key, value, message):
    params = load_params(PROJECT / "params.yaml")
    with pytest.raises(ConfigError, match=message):
        apply_overrides(params.drip, {key: value})


def test_overrides_skip_none_and_keep_the_rest():
    params = load_params(PROJECT / "params.yaml")
    cfg = apply_overrides(params.drip, {"batch_size": 7, "lr": None})
    assert cfg.batch_size == 7 and cfg.lr == params.drip.lr
    assert cfg.schedule == params.drip.schedule


def test_use_profile_full_replaces_the_schedule_and_keeps_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text())
    use_profile(path, "full")
    params = load_params(path)
    assert params.profile == "full"
    assert params.drip.backbone == "eca_nfnet_l1" and params.drip.img_size == 160
    assert list(params.drip.schedule)[0] == "s50k" and "s1" not in params.drip.schedule
    assert params.drip.schedule["s500k"].qry_augs_intensity == 0.60
    assert params.demo_data.n_training == 240  # sections the profile leaves alone stay
    assert "# The one source of parameters" in path.read_text()

    use_profile(path, "demo")  # the values the switch overwrote were kept as profile "demo"
    assert load_params(path) == load_params(PROJECT / "params.yaml")


def test_use_profile_unknown_name(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text())
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        use_profile(path, "huge")
    assert path.read_text() == (PROJECT / "params.yaml").read_text()


def test_dvc_stage_params_cover_every_setting_that_shapes_a_drip_step():
    """dvc.yaml lists drip params one by one (so that runtime knobs rerun nothing):
    a new DripConfig field must be added there, or declared a runtime field."""
    import dataclasses

    from embedlab.config import DRIP_RUNTIME_FIELDS, DripConfig

    stage = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["drip"]["do"]
    listed = {p.split(".", 1)[1] for p in stage["params"] if p.startswith("drip.") and "${" not in p}
    assert listed == {f.name for f in dataclasses.fields(DripConfig)} - set(DRIP_RUNTIME_FIELDS)
    assert "drip.schedule.${key}" in stage["params"]


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


def test_dvc_stage_params_cover_every_setting_of_the_gem_and_triplet_stages():
    """Like the drip stage: each field shapes the model (listed in dvc.yaml) or is a runtime knob."""
    import dataclasses

    from embedlab.config import GEM_RUNTIME_FIELDS, TRIPLET_RUNTIME_FIELDS, GemConfig, TripletConfig

    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    gem = {p.split(".", 1)[1] for p in stages["gem"]["do"]["params"] if p.startswith("gem.")}
    # gem.recipe is only the CLI's default set; each stage names its own.
    assert gem == {f.name for f in dataclasses.fields(GemConfig)} - set(GEM_RUNTIME_FIELDS) - {"recipe"}
    data_settings = {"data_out", "fake_classes", "valid_fraction"}  # the face_data stage's, a dependency
    face_data = {p.split(".", 1)[1] for p in stages["face_data"]["params"] if p.startswith("triplet.")}
    assert face_data == data_settings
    model = {f.name for f in dataclasses.fields(TripletConfig)} - set(TRIPLET_RUNTIME_FIELDS) - data_settings
    for phase, other in (("pretrain", "finetune"), ("finetune", "pretrain")):
        listed = {p.split(".", 1)[1] for p in stages[f"triplet_{phase}"]["params"] if p.startswith("triplet.")}
        assert listed == model - {other}, phase  # a phase does not rerun when the other's settings change


def test_dvc_stage_params_cover_every_setting_of_the_templates_and_decoder_stages():
    import dataclasses

    from embedlab.config import DECODER_RUNTIME_FIELDS, DecoderConfig, TemplatesConfig

    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    templates = {p.split(".", 1)[1] for p in stages["templates"]["params"] if p.startswith("templates.")}
    # batch_size / num_workers change how fast the photos are embedded, not the templates.
    assert templates == {f.name for f in dataclasses.fields(TemplatesConfig)} - {"batch_size", "num_workers"}
    decoder = {p.split(".", 1)[1] for p in stages["decoder"]["params"] if p.startswith("decoder.")}
    assert decoder == {f.name for f in dataclasses.fields(DecoderConfig)} - set(DECODER_RUNTIME_FIELDS)


def test_bad_gem_and_triplet_settings_name_the_setting(tmp_path):
    path = tmp_path / "params.yaml"
    for section, key, value, message in (("gem", "k", 1, "gem.k"), ("gem", "devices", 0, "gem.devices"),
                                         ("triplet", "fake_classes", "each", "triplet.fake_classes"),
                                         ("triplet", "p", 1, "at least 2")):
        bad = yaml.safe_load((PROJECT / "params.yaml").read_text())
        bad[section][key] = value
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message):
            load_params(path)
    bad = yaml.safe_load((PROJECT / "params.yaml").read_text())
    bad["triplet"]["finetune"]["miner"] = "semi-hard"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="miner"):
        load_params(path)
