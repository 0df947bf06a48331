"""The stages a sweep can tune: what a trial trains, which settings it may sample, what it optimises.

Adding a stage is one :func:`register` call: its metric and direction, the
Lightning metric fed to the pruner each epoch, its sweep section of
params.yaml (a :class:`~embedlab.config.StageSweep` field of ``SweepConfig``),
its sweepable settings (:class:`Knob`), the settings every trial fixes, a
check run before any trial (missing parents, data) and how to run one trial
into its own output folders. The decoder, at the end, is the shortest example.

The GeM stage may also sweep its recipe's ``intensity`` (space key
``augment_intensity``): each trial then generates its own small set first.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from embedlab.config import (
    ConfigError,
    DecoderConfig,
    DripConfig,
    DripStep,
    GemConfig,
    Params,
    StageSweep,
    TripletConfig,
    TripletPhase,
    apply_overrides,
)
from embedlab.sweep.space import Knob, ParamPath, scalar_fields


@dataclasses.dataclass(frozen=True)
class TrialFolders:
    """Where one trial writes (``models/sweeps/<study>/trial_<n>``, ``reports/sweeps/...``):
    never the DVC pipeline's own outputs."""

    models: Path
    reports: Path

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    def redirect(self, request: Any) -> Any:
        """Point a stage request's output roots (``OutputFolders``) at this trial's folders."""
        request.models_root, request.reports_root, request.plots_root = self.models, self.reports, self.plots
        return request


@dataclasses.dataclass(frozen=True)
class SweepStage:
    name: str  # as on the command line and in params.yaml's sweep section: drip_stage
    metric: str  # the key of the stage's summary the study optimises
    direction: str  # maximize | minimize
    epoch_metric: str  # the Lightning metric reported to the pruner after each epoch
    epoch_direction: str  # its own direction (reported sign-flipped when it differs from the study's)
    section: Callable[[Params], StageSweep]
    target: Callable[[Params], str]  # the step / recipe / phase a trial trains
    knobs: Callable[[Params], dict[str, Knob]]
    fixed: Callable[[Params], dict[ParamPath, Any]]  # settings every trial gets (epochs, evaluate ...)
    check: Callable[[Params], None]  # raises before any trial when a trial could not start
    run: Callable[[Params, TrialFolders, Sequence[Any]], dict]  # one trial -> the stage's summary
    # raises ConfigError for a trial's params that params.yaml's own checks accept but the stage would not
    validate: Callable[[Params], None] = lambda params: None


STAGES: dict[str, SweepStage] = {}


def register(stage: SweepStage) -> SweepStage:
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> SweepStage:
    if name not in STAGES:
        raise ConfigError(f"sweep: unknown stage {name!r}; known: {sorted(STAGES)}")
    return STAGES[name]


# Settings a trial fixes itself rather than samples: its length and the scoring it needs.
_FIXED = ("epochs", "evaluate", "evaluate_before")


def _scoring(section: str, params: Params, epochs_path: ParamPath) -> dict[ParamPath, Any]:
    """Trials are always scored (on the sweep's fixed subset of the DISC sets, when it sets one); the starting
    model's score would be the same for every trial."""
    fixed: dict[ParamPath, Any] = {(section, "evaluate"): True, (section, "evaluate_before"): False}
    sweep = getattr(params.sweep, f"{section}_stage")
    if sweep.epochs:
        fixed[epochs_path] = sweep.epochs
    if sweep.score_queries:
        fixed[("evaluate", "queries")] = sweep.score_queries
    if sweep.score_references:
        fixed[("evaluate", "references")] = sweep.score_references
    return fixed


# --- drip: one step of drip_schedule, from that step's parent --------------------------------------

def _drip_step(params: Params) -> tuple[str, DripStep]:
    name = params.sweep.drip_stage.step
    if name not in params.drip_schedule:
        raise ConfigError(f"sweep.drip_stage.step: {name!r} is not a step of drip_schedule; "
                          f"steps: {list(params.drip_schedule)}")
    return name, params.drip_schedule[name]


def _drip_knobs(params: Params) -> dict[str, Knob]:
    """drip.<setting>, except where the step sets its own value (then drip_schedule.<step>.<setting>)."""
    name, step = _drip_step(params)
    knobs = {k: Knob(("drip", k), a) for k, a in scalar_fields(DripConfig, _FIXED).items()}
    for key, annotation in scalar_fields(DripStep, ("init_from", "epochs")).items():
        if key not in knobs or getattr(step, key) is not None:
            knobs[key] = Knob(("drip_schedule", name, key), annotation)
    return knobs


def _drip_request(params: Params, folders: TrialFolders | None = None):
    from embedlab.stages.drip import plan_scheduled_step

    name, _ = _drip_step(params)
    request = plan_scheduled_step(params, name)  # parents from the pipeline's models/drip
    if folders is not None:
        folders.redirect(request)
    return request


def _drip_check(params: Params) -> None:
    request = _drip_request(params)
    if request.pretrained is not None and not Path(request.pretrained).is_file():
        raise FileNotFoundError(f"{request.pretrained}: the starting weights of drip step {request.name!r} are "
                                "missing; run `embedlab init-weights` (or `dvc repro drip_init`) first")
    if request.build_w_matrix is not None and not Path(request.build_w_matrix).is_file():
        parent = request.step.init_from
        raise FileNotFoundError(f"{request.build_w_matrix}: the parent checkpoint of drip step {request.name!r} "
                                f"is missing; run `dvc repro drip@{parent}` first")


def _drip_run(params: Params, folders: TrialFolders, callbacks: Sequence[Any]) -> dict:
    from embedlab.stages.drip import run_drip

    return run_drip(params, _drip_request(params, folders), callbacks=callbacks)


register(SweepStage(
    "drip_stage", metric="uAP", direction="maximize", epoch_metric="val_loss", epoch_direction="minimize",
    section=lambda p: p.sweep.drip_stage, target=lambda p: _drip_step(p)[0], knobs=_drip_knobs,
    fixed=lambda p: _scoring("drip", p, ("drip_schedule", _drip_step(p)[0], "epochs")),
    check=_drip_check, run=_drip_run,
))


# --- gem: the GeM trainer on one generated set -----------------------------------------------------

# The swept recipe's intensity (augment.recipes.<recipe>.intensity, see augment/recipes.py). The pipeline's set
# has one intensity, so a sweep over it makes each trial generate its own (small: sweep.gem_stage.classes,
# per_class) set at the sampled value; best_params.yaml then sets the recipe's intensity for `dvc exp run`.
AUGMENT_INTENSITY = "augment_intensity"


def _gem_recipe(params: Params) -> str:
    return params.sweep.gem_stage.recipe or params.pipeline.gem[0]


def _generates(params: Params) -> bool:
    return AUGMENT_INTENSITY in params.sweep.gem_stage.space


def _gem_knobs(params: Params) -> dict[str, Knob]:
    knobs = {k: Knob(("gem", k), a) for k, a in scalar_fields(GemConfig, _FIXED).items()}
    recipe = _gem_recipe(params)
    if recipe in params.augment.recipes:
        knobs[AUGMENT_INTENSITY] = Knob(("augment", "recipes", recipe, "intensity"), "float")
    elif _generates(params):
        raise ConfigError(f"sweep.gem_stage.space.{AUGMENT_INTENSITY}: the trials' set {recipe!r} is not a recipe "
                          f"of augment.recipes, so it has no intensity; known: {sorted(params.augment.recipes)}")
    return knobs


def _trial_augment(params: Params) -> dict[str, Any]:
    """augment's settings a trial's own set overrides (None: augment's own)."""
    sweep = params.sweep.gem_stage
    return {"classes": sweep.classes, "per_class": sweep.per_class}


def _trial_recipe(params: Params):
    """(augment settings, recipe) of a trial's own set; the recipe loader checks its intensity is in [0, 1]."""
    from embedlab.stages.augment import plan_recipe

    cfg = apply_overrides(params.augment, _trial_augment(params), "augment")
    return cfg, plan_recipe(cfg, _gem_recipe(params))


def _gem_validate(params: Params) -> None:
    if _generates(params):
        _trial_recipe(params)


def _gem_request(params: Params, folders: TrialFolders | None = None, data_dir: Path | None = None):
    from embedlab.stages.gem import plan_gem

    request = plan_gem(params, params.sweep.gem_stage.recipe, data_dir)
    if folders is not None:
        folders.redirect(request)
    return request


def _gem_check(params: Params) -> None:
    if _generates(params):  # the trials' own sets need the recipe and its source images, not the pipeline's set
        from embedlab.augment.generator import generated_set_classes

        cfg, recipe = _trial_recipe(params)
        generated_set_classes(cfg.source, cfg.every, cfg.classes, cfg.faces if recipe.faces else None)
        return
    request = _gem_request(params)
    if not (request.data_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{request.data_dir}: no generated training set; run "
                                f"`embedlab augment --recipe {request.recipe}` (or `dvc repro augment@{request.recipe}`) first")


def _gem_run(params: Params, folders: TrialFolders, callbacks: Sequence[Any]) -> dict:
    from embedlab.stages.augment import run_augment
    from embedlab.stages.gem import run_gem

    data_dir = None
    if _generates(params):  # params holds the trial's intensity; its set goes next to its model
        recipe = _gem_recipe(params)
        _, data_dir = run_augment(params, recipe, _trial_augment(params), out=folders.models / "data" / recipe,
                                  if_stale="restart", progress=False)
    return run_gem(params, _gem_request(params, folders, data_dir), callbacks=callbacks)


register(SweepStage(
    # No validation set: the pruner follows the epoch's training loss.
    "gem_stage", metric="uAP", direction="maximize", epoch_metric="train_loss_epoch", epoch_direction="minimize",
    section=lambda p: p.sweep.gem_stage, target=_gem_recipe, knobs=_gem_knobs,
    fixed=lambda p: _scoring("gem", p, ("gem", "epochs")), check=_gem_check, run=_gem_run, validate=_gem_validate,
))


# --- triplet: one phase of the face encoder -------------------------------------------------------

# The face_data stage's settings: a trial reads the data set they built, so sampling them changes nothing.
_FACE_DATA = ("data_out", "fake_classes", "valid_fraction")


def _triplet_phase(params: Params) -> str:
    from embedlab.stages.triplet import PHASES

    phase = params.sweep.triplet_stage.phase
    if phase not in PHASES:
        raise ConfigError(f"sweep.triplet_stage.phase: {phase!r} is not one of {list(PHASES)}")
    return phase


def _triplet_knobs(params: Params) -> dict[str, Knob]:
    """triplet.<setting>, and the swept phase's miner / lr as triplet_phases.<phase>.<setting>."""
    phase = _triplet_phase(params)
    knobs = {k: Knob(("triplet", k), a) for k, a in scalar_fields(TripletConfig, _FACE_DATA).items()}
    knobs.update({k: Knob(("triplet_phases", phase, k), a)
                  for k, a in scalar_fields(TripletPhase, ("init_from", "epochs")).items()})
    return knobs


def _triplet_fixed(params: Params) -> dict[ParamPath, Any]:
    epochs = params.sweep.triplet_stage.epochs
    return {("triplet_phases", _triplet_phase(params), "epochs"): epochs} if epochs else {}


def _triplet_request(params: Params, folders: TrialFolders | None = None):
    from embedlab.stages.triplet import plan_phase

    request = plan_phase(params, _triplet_phase(params))  # a missing parent phase is a clear error
    if folders is not None:
        folders.redirect(request)
    return request


def _triplet_check(params: Params) -> None:
    from embedlab.stages.triplet import FaceData

    _triplet_request(params)
    FaceData.load(params)


def _triplet_run(params: Params, folders: TrialFolders, callbacks: Sequence[Any]) -> dict:
    from embedlab.stages.triplet import run_triplet

    return run_triplet(params, _triplet_request(params, folders), callbacks=callbacks)


register(SweepStage(
    "triplet_stage", metric="valid_eer", direction="minimize", epoch_metric="val_eer", epoch_direction="minimize",
    section=lambda p: p.sweep.triplet_stage, target=_triplet_phase, knobs=_triplet_knobs, fixed=_triplet_fixed,
    check=_triplet_check, run=_triplet_run,
))


# --- decoder: template -> face, on the templates stage's pairs ------------------------------------

def _decoder_check(params: Params) -> None:
    from embedlab.stages.decoder import DecoderInputs

    DecoderInputs.load(params, params.decoder)  # templates, template model and perceptor all readable


def _decoder_run(params: Params, folders: TrialFolders, callbacks: Sequence[Any]) -> dict:
    from embedlab.stages.decoder import DecoderRequest, run_decoder

    return run_decoder(params, folders.redirect(DecoderRequest()), callbacks=callbacks)


register(SweepStage(
    "decoder_stage", metric="cosine_mean", direction="maximize", epoch_metric="val_cosine_mean",
    epoch_direction="maximize", section=lambda p: p.sweep.decoder_stage, target=lambda p: "decoder",
    knobs=lambda p: {k: Knob(("decoder", k), a) for k, a in scalar_fields(DecoderConfig, _FIXED).items()},
    fixed=lambda p: _scoring("decoder", p, ("decoder", "epochs")), check=_decoder_check, run=_decoder_run,
))
