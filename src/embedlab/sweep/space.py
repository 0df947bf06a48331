"""A sweep's search space: params.yaml's ``sweep.<stage>.space``, checked, sampled and applied.

Each key names a setting of the stage (a :class:`Knob`: where it lives in
params.yaml and its annotated type). A float setting takes
``{low, high, log, step}``, an int setting ``{low, high, step, log}``, any
setting ``{choices: [...]}``. Everything is checked before the first trial:
an unknown key, ``low > high``, a log range reaching 0, empty choices or a
value the stage's own config rejects is a :class:`ConfigError` naming
``sweep.<stage>.space.<key>``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import optuna

from embedlab.config import ConfigError, Params, _build, _coerce

ParamPath = tuple[str, ...]  # a setting's place in params.yaml, e.g. ("drip_schedule", "s1", "epochs")


@dataclasses.dataclass(frozen=True)
class Knob:
    """A setting a sweep may sample: its params.yaml path and its annotation (e.g. "float | None")."""

    path: ParamPath
    annotation: str

    @property
    def kind(self) -> str:
        kinds = [k.strip() for k in self.annotation.split("|") if k.strip() != "None"]
        return kinds[0] if len(kinds) == 1 else "any"


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One sampled setting: a float / int range or a list of choices."""

    key: str
    knob: Knob
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.knob.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def endpoints(self) -> list:
        """The values that must all be acceptable to the stage's config."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def scalar_fields(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """``{field: annotation}`` of the plain (int / float / str / bool) fields of dataclass ``cls``."""
    scalars = {"int", "float", "str", "bool", "None"}
    out = {}
    for f in dataclasses.fields(cls):
        kinds = {k.strip() for k in str(f.type).split("|")}
        if kinds <= scalars and f.name not in exclude:
            out[f.name] = str(f.type)
    return out


def parse_space(space: Mapping[str, Any], knobs: Mapping[str, Knob], where: str) -> list[Dimension]:
    """Check ``space`` (``where`` is e.g. ``sweep.drip_stage.space``) against the stage's knobs."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{where}: declare at least one setting to sample, e.g. "
                          "lr: {low: 1.0e-4, high: 1.0e-2, log: true}")
    return [_dimension(str(key), spec, knobs, f"{where}.{key}") for key, spec in space.items()]


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    try:
        return float(value) if isinstance(value, str) else value  # PyYAML reads 1e-4 as a string
    except ValueError:
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}") from None


def _dimension(key: str, spec: Any, knobs: Mapping[str, Knob], where: str) -> Dimension:
    if key not in knobs:
        raise ConfigError(f"{where}: unknown parameter {key!r}; this stage's sweepable settings: {sorted(knobs)}")
    knob = knobs[key]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected {{low, high[, log, step]}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise ConfigError(f"{where}: choices cannot be combined with {extra}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        values = tuple(_coerce(c, knob.annotation, f"{where}.choices") for c in choices)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: choices repeat a value: {list(values)}")
        return Dimension(key, knob, choices=values)
    unknown = sorted(set(spec) - {"low", "high", "log", "step"})
    if unknown:
        raise ConfigError(f"{where}: unknown range key(s) {unknown}; use low, high, log, step (or choices)")
    if knob.kind not in ("int", "float"):
        raise ConfigError(f"{where}: a {knob.annotation} setting takes {{choices: [...]}}, not a range")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high = _number(spec["low"], where, "low"), _number(spec["high"], where, "high")
    step = _number(spec["step"], where, "step") if spec.get("step") is not None else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if knob.kind == "int":
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and float(v) != int(v):
                raise ConfigError(f"{where}: {key} is an int setting; {name} {v!r} is not a whole number")
        low, high, step = int(low), int(high), (int(step) if step is not None else None)
    else:
        low, high = float(low), float(high)
    if low > high:
        raise ConfigError(f"{where}: low {low} > high {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range must lie above 0, got low {low}")
    if log and step is not None and knob.kind == "float":
        raise ConfigError(f"{where}: a float range takes log or step, not both")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {step}")
    return Dimension(key, knob, low=low, high=high, log=log, step=step)


def with_values(params: Params, values: Mapping[ParamPath, Any], where: str = "sweep trial") -> Params:
    """A copy of ``params`` with each path set to its value, type-checked like params.yaml."""
    tree = dataclasses.asdict(params)
    for path, value in values.items():
        node = tree
        for part in path[:-1]:
            if node[part] is None:  # a mapping left empty in params.yaml (a recipe `big:`) reads as None
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return _build(Params, tree, where)


def check_values(params: Params, dimensions: list[Dimension], where: str,
                 validate: Callable[[Params], None] | None = None) -> None:
    """Each range end and choice must be a value the stage accepts (e.g. intensity within [0, 1]): params.yaml's
    own checks, then the stage's ``validate`` (for values those do not check, e.g. a recipe's)."""
    for dim in dimensions:
        for value in dim.endpoints():
            try:
                trial = with_values(params, {dim.knob.path: value})
                if validate is not None:
                    validate(trial)
            except ConfigError as exc:
                raise ConfigError(f"{where}.{dim.key}: {value!r} is not a usable value ({exc})") from None
