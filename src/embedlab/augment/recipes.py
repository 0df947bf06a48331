"""Named augmentation recipes, as data (params.yaml ``augment.base`` / ``augment.recipes``).

A recipe is an ordered list of steps; each step fires with probability ``p``
(default 1) and calls a catalogue op with its magnitudes::

    {op: rotate, p: 0.3, args: {angle: [-50, 50]}}   # a YAML list is a (low, high) range

``augment.base`` is the ``big`` chain; every recipe starts from it, or from
another recipe (``extends``), and changes it with::

    first:     [steps]            run before the chain
    replace:   {op: {p: .., args: {..}}}   new p and/or args for every step of that op
    last:      [steps]            run after the chain
    grayscale: true               a black-and-white set: the anchor and every image end grayscale
    faces:     true               face images (augment.faces) join as extra classes
    intensity: 0.5                a softer recipe: see :func:`scale_steps` (default 1, inherited)

Every chain closes with ``resize`` to the set's size (then ``grayscale`` for
grayscale sets), and ``random_resized_crop`` / ``resize`` steps without a
``size`` produce the set's size. :func:`load_recipes` checks everything (op
names, argument names against each op's signature, probabilities, ranges)
before any image is made; errors name the setting, e.g.
``params.yaml: augment.recipes.blur.replace.blur.p: 1.5 is outside [0, 1]``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from embedlab.augment.catalogue import REGISTRY, get_transform
from embedlab.augment.context import AugContext
from embedlab.augment.query import check_intensity
from embedlab.augment.registry import NEUTRAL
from embedlab.config import ConfigError

BASE_NAME = "big"  # the recipe that is the base chain itself
SIZED_OPS = ("random_resized_crop", "resize")  # ops whose `size` (pixels) defaults to the set's size
_STEP_KEYS = ("op", "p", "args")
_RECIPE_KEYS = ("extends", "first", "replace", "last", "grayscale", "faces", "intensity")


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a chain: ``op`` with magnitudes ``args``, fired with probability ``p``."""

    op: str
    p: float = 1.0
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (ranges as lists), as in params.yaml."""
        return {"op": self.op, "p": self.p, "args": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in self.args.items()}}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A recipe resolved for one set size: its effective steps, closing resize included."""

    name: str
    steps: tuple[Step, ...]
    size: int
    grayscale: bool = False
    faces: bool = False
    extends: str | None = None
    intensity: float = 1.0  # already applied to ``steps``; recorded for the fingerprint and --show

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "extends": self.extends, "size": self.size, "grayscale": self.grayscale,
               "faces": self.faces, "steps": [s.to_dict() for s in self.steps]}
        if self.intensity != 1.0:  # left out at 1: a set made before the setting existed keeps its fingerprint
            out["intensity"] = self.intensity
        return out


# --- validation ----------------------------------------------------------------


def op_arguments(op: str) -> list[str]:
    """The magnitude arguments of a catalogue op (its signature after img, rng, ctx)."""
    params = list(inspect.signature(get_transform(op)).parameters.values())[3:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_probability(value: Any, where: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a probability (a number in [0, 1])")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: {value} is outside [0, 1]")
    return float(value)


def _check_value(value: Any, where: str) -> Any:
    """A magnitude: a scalar, or a list (a (low, high) range when it holds two numbers)."""
    if isinstance(value, (list, tuple)):
        if not all(_is_number(v) or isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: {list(value)!r}: a list must hold numbers (a [low, high] range)")
        if len(value) == 2 and value[0] > value[1]:
            raise ConfigError(f"{where}: range {list(value)} has low > high")
        return tuple(value)
    if value is None or isinstance(value, (bool, str)) or _is_number(value):
        return value
    raise ConfigError(f"{where}: {value!r} is not a number, a [low, high] range or a plain value")


def _check_args(op: str, args: Any, where: str) -> dict[str, Any]:
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {op}'s arguments, got {args!r}")
    known = op_arguments(op)
    out = {}
    for name, value in args.items():
        if name not in known:
            raise ConfigError(f"{where}.{name}: {op} has no argument {name!r}; "
                              f"its arguments: {', '.join(known) or 'none'}")
        out[str(name)] = _check_value(value, f"{where}.{name}")
    return out


def _check_op(op: Any, where: str) -> str:
    if not isinstance(op, str) or op not in REGISTRY:
        raise ConfigError(f"{where}: unknown op {op!r}; known: {', '.join(sorted(REGISTRY))}")
    return op


def parse_step(raw: Any, where: str) -> Step:
    """A step from its params.yaml form, checked (``where`` names it in errors)."""
    if not isinstance(raw, Mapping) or "op" not in raw:
        raise ConfigError(f"{where}: a step is a mapping {{op: NAME, p: PROBABILITY, args: {{...}}}}, got {raw!r}")
    unknown = sorted(set(raw) - set(_STEP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a step has {list(_STEP_KEYS)}")
    op = _check_op(raw["op"], f"{where}.op")
    p = _check_probability(raw.get("p", 1.0), f"{where}.p")
    return Step(op, p, _check_args(op, raw.get("args"), f"{where}.args"))


def _parse_steps(raw: Any, where: str) -> list[Step]:
    if raw is None:
        return []
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(f"{where}: expected a list of steps, got {raw!r}")
    return [parse_step(item, f"{where}[{i}]") for i, item in enumerate(raw)]


def _apply_replace(chain: list[Step], raw: Any, where: str) -> list[Step]:
    if raw is None:
        return chain
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected {{op: {{p: .., args: {{..}}}}}}, got {raw!r}")
    for op, change in raw.items():
        here = f"{where}.{op}"
        _check_op(op, here)
        if not any(s.op == op for s in chain):
            raise ConfigError(f"{here}: the chain has no {op!r} step to replace "
                              f"(its ops: {', '.join(dict.fromkeys(s.op for s in chain))})")
        if not isinstance(change, Mapping):
            raise ConfigError(f"{here}: expected {{p: .., args: {{..}}}}, got {change!r}")
        unknown = sorted(set(change) - {"p", "args"})
        if unknown:
            raise ConfigError(f"{here}: unknown key(s) {unknown}; replace takes p and args")
        p = _check_probability(change["p"], f"{here}.p") if "p" in change else None
        args = _check_args(op, change.get("args"), f"{here}.args")
        chain = [Step(s.op, s.p if p is None else p, {**s.args, **args}) if s.op == op else s for s in chain]
    return chain


def _check_flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


# --- intensity -----------------------------------------------------------------


def _toward(neutral: float, value: Any, intensity: float) -> Any:
    """``value`` (a number or a (low, high) range) moved linearly toward ``neutral``: all of it at 0."""
    if _is_number(value):
        return neutral + intensity * (value - neutral)
    if isinstance(value, tuple) and len(value) == 2 and all(_is_number(v) for v in value):
        return tuple(neutral + intensity * (v - neutral) for v in value)
    return value  # a flag, a name, a colour: no scale


def scale_steps(steps: Sequence[Step], intensity: float) -> list[Step]:
    """The steps at ``intensity`` I in [0, 1], as drip's ``qry_augs_intensity`` scales its queries.

    Every probability becomes ``p * I``. A magnitude whose op declares a neutral
    value ``n`` (the value at which it changes nothing: ``rotate``'s angle 0,
    ``crop``'s keep 1; see ``register(..., neutral=...)``) becomes
    ``n + I * (value - n)``, both ends of a range alike; other magnitudes (sizes
    of overlays, text lengths, JPEG quality) stay as written, so those ops only
    fire less often. At 1 the steps are returned unchanged (``n + 1 * (v - n)``
    need not equal ``v`` in floating point, and the bytes must not change);
    above 1 is refused: probabilities would cap and magnitudes leave their
    ops' valid ranges (a crop keeping less than nothing).
    """
    if intensity == 1.0:
        return list(steps)
    out = []
    for s in steps:
        neutral = NEUTRAL.get(s.op, {})
        args = {k: _toward(neutral[k], v, intensity) if k in neutral else v for k, v in s.args.items()}
        out.append(Step(s.op, s.p * intensity, args))
    return out


def _check_intensity(value: Any, where: str) -> float:
    if not _is_number(value):
        raise ConfigError(f"{where}: {value!r} is not a number in [0, 1]")
    try:
        return check_intensity(value, where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# --- resolution ----------------------------------------------------------------


def _resolve(name: str, base: list[Step], recipes: Mapping[str, Any], where: str,
             seen: tuple[str, ...] = ()) -> tuple[list[Step], bool, bool, float]:
    """(chain without the closing steps, grayscale, faces, intensity) of recipe ``name``."""
    here = f"{where}.recipes.{name}"
    body = recipes[name] or {}
    if not isinstance(body, Mapping):
        raise ConfigError(f"{here}: expected a mapping (e.g. {{extends: big, grayscale: true}}), got {body!r}")
    unknown = sorted(set(body) - set(_RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"{here}: unknown key(s) {unknown}; a recipe has {list(_RECIPE_KEYS)}")
    parent = body.get("extends")
    if parent is None or (name == BASE_NAME and parent == BASE_NAME):
        chain, grayscale, faces, intensity = list(base), False, False, 1.0
    else:
        if parent not in recipes:
            raise ConfigError(f"{here}.extends: unknown recipe {parent!r}; known: {', '.join(sorted(recipes))}")
        if parent in seen or parent == name:
            raise ConfigError(f"{here}.extends: {' -> '.join((*seen, name, parent))} is a cycle")
        chain, grayscale, faces, intensity = _resolve(parent, base, recipes, where, (*seen, name))
    chain = _parse_steps(body.get("first"), f"{here}.first") + chain
    chain = _apply_replace(chain, body.get("replace"), f"{here}.replace")
    chain = chain + _parse_steps(body.get("last"), f"{here}.last")
    if "grayscale" in body:
        grayscale = _check_flag(body["grayscale"], f"{here}.grayscale")
    if "faces" in body:
        faces = _check_flag(body["faces"], f"{here}.faces")
    if "intensity" in body:
        intensity = _check_intensity(body["intensity"], f"{here}.intensity")
    return chain, grayscale, faces, intensity


def _close(chain: list[Step], size: int, grayscale: bool) -> tuple[Step, ...]:
    """Fill in the set's size and append the closing resize (and grayscale)."""
    sized = [Step(s.op, s.p, {**s.args, "size": size}) if s.op in SIZED_OPS and "size" not in s.args else s
             for s in chain]
    closing = [Step("resize", 1.0, {"size": size})] + ([Step("grayscale")] if grayscale else [])
    return tuple(sized + closing)


def load_recipes(base: Any, recipes: Any, size: int, where: str = "params.yaml: augment") -> dict[str, Recipe]:
    """Every recipe of params.yaml's ``augment`` section, resolved and checked.

    ``where`` prefixes every error (the file and section the values came from).
    """
    if not _is_number(size) or int(size) < 8:
        raise ConfigError(f"{where}.size: {size!r} must be an integer of at least 8 (pixels)")
    base_steps = _parse_steps(base, f"{where}.base")
    if not base_steps:
        raise ConfigError(f"{where}.base: the base chain (the {BASE_NAME!r} recipe) is empty or missing")
    if not isinstance(recipes, Mapping) or not recipes:
        raise ConfigError(f"{where}.recipes: no recipes defined (expected a mapping name -> recipe)")
    out = {}
    for name in recipes:
        chain, grayscale, faces, intensity = _resolve(str(name), base_steps, recipes, where)
        parent = (recipes[name] or {}).get("extends")
        # The whole chain is scaled once, here: inherited steps and the recipe's own alike, never the closing ones.
        steps = _close(scale_steps(chain, intensity), int(size), grayscale)
        out[str(name)] = Recipe(str(name), steps, int(size), grayscale, faces,
                                parent if parent is not None else (None if name == BASE_NAME else BASE_NAME),
                                intensity)
    return out


def get_recipe(recipes: Mapping[str, Recipe], name: str, where: str = "params.yaml: augment") -> Recipe:
    """Recipe ``name``; an unknown name is an error listing the known ones."""
    if name not in recipes:
        raise ConfigError(f"{where}.recipes: unknown recipe {name!r}; known: {', '.join(sorted(recipes))}")
    return recipes[name]


# --- display ---------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_recipe(recipe: Recipe) -> str:
    """The effective steps as a table (``embedlab augment --recipe NAME --show``)."""
    flags = [f"extends {recipe.extends}" if recipe.extends else "the base chain"]
    flags += ["grayscale"] * recipe.grayscale + ["+ face classes"] * recipe.faces
    flags += [f"intensity {recipe.intensity:g}"] * (recipe.intensity != 1.0)
    lines = [f"recipe {recipe.name} ({', '.join(flags)}; {len(recipe.steps)} steps at {recipe.size} px)",
             f"{'#':>3}  {'op':<20} {'p':>5}  args"]
    for i, s in enumerate(recipe.steps, 1):
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in s.args.items()) or "-"
        lines.append(f"{i:>3}  {s.op:<20} {s.p:>5.2g}  {args}")
    return "\n".join(lines)


# --- running ---------------------------------------------------------------------


class RecipeAugmenter:
    """Applies a recipe's steps to PIL images: ``aug(img, rng)``.

    The same rng state gives the same bytes. ``anchor(img)`` is the set's
    ``_0`` image: the original resized to the set's size (grayscale for
    grayscale sets).
    """

    def __init__(self, recipe: Recipe, ctx: AugContext | None = None) -> None:
        self.recipe = recipe
        self.ctx = ctx or AugContext()
        self._steps = [(get_transform(s.op), s.op, s.p, dict(s.args)) for s in recipe.steps if s.p > 0]

    def __call__(self, img: Image.Image, rng: np.random.Generator, trace: list[str] | None = None) -> Image.Image:
        """Augment ``img``; names of the ops that fired are appended to ``trace``."""
        out = img if img.mode == "RGB" else img.convert("RGB")
        for fn, name, p, kwargs in self._steps:
            if p >= 1.0 or rng.random() < p:
                out = fn(out, rng, self.ctx, **kwargs)
                if trace is not None:
                    trace.append(name)
        if self.recipe.grayscale:
            out = out.convert("L")  # exact: the closing grayscale step left R = G = B
        return out

    def anchor(self, img: Image.Image) -> Image.Image:
        out = img.resize((self.recipe.size, self.recipe.size), Image.BICUBIC)  # the original's image.resize
        return out.convert("L") if self.recipe.grayscale else out

    def __repr__(self) -> str:
        return f"RecipeAugmenter({self.recipe.name!r}, {len(self._steps)} steps, size={self.recipe.size})"
