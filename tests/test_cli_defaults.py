"""params.yaml is the one home of defaults: MLproject entry points and CLI flags left out fall back to it."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest
import yaml

from embedlab import cli
from embedlab.config import load_params

PROJECT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = yaml.safe_load((PROJECT / "MLproject").read_text())["entry_points"]
# Entry-point parameters that name what to run rather than a setting: their defaults must exist in params.yaml.
NAMING = {("triplet_stage", "phase"), ("sweep", "stage"), ("sweep", "workers")}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _command_argv(entry: str) -> list[str]:
    """The entry point's command with every parameter at its default, as `mlflow run` quotes it."""
    spec = ENTRY_POINTS[entry]
    command = spec["command"].format(**{k: shlex.quote(str(v["default"])) for k, v in spec["parameters"].items()})
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "embedlab"], command
    return words[3:]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_mlproject_default_is_params_yaml_or_left_to_it(entry):
    params = load_params(PROJECT / "params.yaml")
    for name, spec in ENTRY_POINTS[entry]["parameters"].items():
        default = spec["default"]
        if name == "params":
            assert default == "params.yaml"
        elif (entry, name) == ("triplet_stage", "phase"):
            assert default in params.triplet_phases
        elif (entry, name) == ("sweep", "stage"):
            assert default in {f.name for f in __import__("dataclasses").fields(params.sweep)}
        elif (entry, name) == ("sweep", "workers"):
            assert default == 1  # processes of this machine: not a setting of params.yaml
        else:
            assert default == "", f"MLproject {entry}.{name}: default {default!r}; leave it \"\" (params.yaml's)"


def test_every_cli_setting_flag_defaults_to_params_yaml():
    """A flag that is not given is None (the command then reads params.yaml), and every flag says what it does."""
    # Defaults that are no settings of params.yaml: which file, what to do, where to write.
    allowed = {"params": "params.yaml", "if_stale": "fail", "set": "test", "restart": False, "show": False,
               "no_progress": False, "markdown": False, "verbose": False, ("evaluate-disc", "out"): "eval",
               ("code-deps", "out"): "reports/code", ("import", "queries"): "dev",
               ("sweep", "workers"): 1, ("sweep", "worker_index"): 0, ("index", "kind"): "flat", ("search", "k"): 10,
               ("submission", "max_predictions"): 500_000}  # the ISC rules' cap, not a setting
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help, f"embedlab {name} {action.option_strings[0]}: no help text"
            if action.required:
                continue
            if name == "postprocess":
                continue  # a standalone tool on files; its defaults are checked below
            expected = allowed.get((name, action.dest), allowed.get(action.dest))
            assert action.default == expected, f"embedlab {name} {action.option_strings[0]}: default {action.default!r}"


def test_postprocess_defaults_equal_params_yaml_postprocess():
    params = load_params(PROJECT / "params.yaml")
    sub = _subparsers()["postprocess"]
    defaults = {a.dest: a.default for a in sub._actions}
    for key, value in __import__("dataclasses").asdict(params.evaluate.postprocess).items():
        assert defaults[key] == value, key


@pytest.mark.parametrize("entry,target,section", [
    ("drip_stage", "embedlab.stages.drip.run_drip", "drip"),
    ("gem_stage", "embedlab.stages.gem.run_gem", "gem"),
    ("triplet_stage", "embedlab.stages.triplet.run_triplet", "triplet"),
    ("decoder_stage", "embedlab.stages.decoder.run_decoder", "decoder"),
])
def test_an_entry_point_at_its_defaults_runs_exactly_params_yaml(entry, target, section, monkeypatch, tmp_path):
    """`mlflow run . -e <entry>` with no -P trains what `dvc repro` trains: params.yaml's settings."""
    monkeypatch.chdir(PROJECT)
    params = load_params("params.yaml")
    seen = {}

    def capture(run_params, request=None, callbacks=()):
        seen["params"], seen["request"] = run_params, request
        return {}

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(f"{module}.{name}", capture)
    if entry == "triplet_stage":
        # the finetune phase needs pretrain's checkpoint; pretrain (the default) does not
        assert _command_argv(entry)[_command_argv(entry).index("--phase") + 1] == "pretrain"
    assert cli.main(_command_argv(entry)) == 0
    assert seen["params"].runtime == params.runtime
    request = seen["request"]
    if entry == "drip_stage":
        first = next(iter(params.drip_schedule))
        assert request.name == first and request.step == params.drip_schedule[first]
    elif entry == "gem_stage":
        assert request.recipe == params.pipeline.gem[0] and request.cfg == params.gem
    elif entry == "triplet_stage":
        assert request.phase_settings == params.triplet_phases["pretrain"]
    else:
        assert request.cfg == params.decoder
    assert getattr(seen["params"], section) == getattr(params, section)


def test_runtime_flags_override_only_what_they_name(monkeypatch):
    monkeypatch.chdir(PROJECT)
    params = load_params("params.yaml")
    seen = {}
    monkeypatch.setattr("embedlab.stages.gem.run_gem", lambda p, request, callbacks=(): seen.update(p=p) or {})
    assert cli.main(["gem", "--num-workers", "3", "--compile", "true", "--precision", "bf16"]) == 0
    runtime = seen["p"].runtime
    assert (runtime.num_workers, runtime.compile, runtime.precision) == (3, True, "bf16")
    assert runtime.channels_last == params.runtime.channels_last and runtime.devices == params.runtime.devices


def test_step_and_a_step_of_your_own_are_refused_together(capsys, monkeypatch):
    monkeypatch.chdir(PROJECT)
    assert cli.main(["drip", "--step", "s1", "--n-facebook-samples", "10"]) == 2
    assert "--step" in capsys.readouterr().err
