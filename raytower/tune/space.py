"""Search spaces: YAML in, a validated space out, an Optuna define-by-run function from it.

    fixed:                       # TrainConfig fields held constant in every trial
      stage1_max_epochs: 6
    search:                      # TrainConfig fields the sampler proposes
      temp_start: {distribution: log_uniform, low: 0.05, high: 1.0}
      unfreeze_depth: {distribution: int, low: 0, high: 3}
      lr_ratio: {distribution: log_uniform, low: 0.001, high: 1.0, when: "unfreeze_depth > 0"}
      fusion: {distribution: categorical, choices: [concat, gated, moe]}
    start_from:                  # configurations tried first (points_to_evaluate)
      - {temp_start: 1.0, unfreeze_depth: 1, lr_ratio: 0.01, fusion: gated}

Distributions: uniform, log_uniform, int, log_int, categorical. ``when: "<knob> <op> <value>"``
(ops ==, !=, <, <=, >, >=) makes a knob exist only where the condition holds, in define-by-run
order: the knob it names must come earlier. Every mistake is a one-line ConfigError naming the
file, found before Ray starts.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raytower._io import load_user_yaml, read_user_text
from raytower.errors import ConfigError
from raytower.train.config import TrainConfig

DISTRIBUTIONS = ("uniform", "log_uniform", "int", "log_int", "categorical")
_OPS = {"==": operator.eq, "!=": operator.ne, "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class Condition:
    knob: str
    op: str
    value: Any

    def holds(self, params: dict[str, Any]) -> bool:
        return self.knob in params and _OPS[self.op](params[self.knob], self.value)

    def __str__(self) -> str:
        return f"{self.knob} {self.op} {self.value}"


@dataclass(frozen=True)
class Knob:
    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    when: Condition | None = None

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this knob can take."""
        if self.distribution == "categorical":
            return value in list(self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.distribution in ("int", "log_int") and value != int(value):
            return False
        return float(self.low) <= value <= float(self.high)

    def suggest(self, trial) -> Any:
        d = self.distribution
        if d == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if d in ("int", "log_int"):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=d == "log_int")
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=d == "log_uniform")


@dataclass
class SearchSpace:
    knobs: list[Knob]
    fixed: dict[str, Any] = field(default_factory=dict)
    start_from: list[dict[str, Any]] = field(default_factory=list)
    source: str = "<space>"

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def define_by_run(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: sample the knobs whose conditions hold; return the fixed values."""
        params: dict[str, Any] = {}
        for knob in self.knobs:
            if knob.when is None or knob.when.holds(params):
                params[knob.name] = knob.suggest(trial)
        return dict(self.fixed)

    def largest(self, name: str):
        """The largest value a trial can get for the numeric field ``name``: its knob's high end or
        largest choice when searched, else the fixed (or default) value."""
        for k in self.knobs:
            if k.name == name:
                return max(k.choices) if k.distribution == "categorical" else k.high
        return getattr(self.config({}), name)

    def active(self, params: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``params`` that this space would sample (conditions applied in order)."""
        out: dict[str, Any] = {}
        for knob in self.knobs:
            if knob.name in params and (knob.when is None or knob.when.holds(out)):
                out[knob.name] = params[knob.name]
        return out

    def advice(self) -> list[str]:
        """TrainConfig.advice at the edges of the space: what some trial would be warned of."""
        edge = {k.name: k.high for k in self.knobs if k.distribution != "categorical"}
        edge |= {k.name: max(k.choices, key=lambda c: c if isinstance(c, (int, float)) else 0)
                 for k in self.knobs if k.distribution == "categorical"}
        try:
            return self.config(edge).advice()
        except ConfigError:
            return []  # the corner is not a valid config as a whole: the knobs' own checks stand

    def config(self, sampled: dict[str, Any], **overrides) -> TrainConfig:
        return TrainConfig.from_dict({**self.fixed, **sampled, **overrides}, source=self.source)


SHIPPED = ("quick", "default")  # spaces that ship in the package: --space quick|default


def resolve_space(name_or_path: str | Path) -> Path:
    """``quick`` or ``default`` (the package's own spaces, wherever it is installed), else a path."""
    if str(name_or_path) in SHIPPED:
        from importlib.resources import files

        return Path(str(files("raytower.search_spaces") / f"{name_or_path}.yaml"))
    return Path(name_or_path)


def load_space(path: str | Path) -> SearchSpace:
    path = resolve_space(path)
    return parse_space(load_user_yaml(read_user_text(path, "search space"), path, "search space"), str(path))


def parse_space(doc: Any, source: str = "<space>") -> SearchSpace:
    def bad(msg: str):
        raise ConfigError(msg, source)

    if not isinstance(doc, dict):
        bad("a search space is a mapping with 'search' (and optionally 'fixed', 'start_from')")
    unknown_sections = sorted(set(doc) - {"search", "fixed", "start_from", "description"})
    if unknown_sections:
        bad(f"unknown section(s) {', '.join(unknown_sections)}; expected search, fixed, start_from, description")
    search = doc.get("search") or {}
    fixed = doc.get("fixed") or {}
    if not isinstance(search, dict) or not search:
        bad("'search' must map at least one knob to its distribution")
    if not isinstance(fixed, dict):
        bad("'fixed' must map config fields to values")
    for name in [*search, *fixed]:
        if name not in _FIELD_TYPES:
            bad(f"unknown knob {name!r}: not a field of the training config")
    both = sorted(set(search) & set(fixed))
    if both:
        bad(f"{', '.join(both)} both searched and fixed")
    try:
        TrainConfig.from_dict(fixed)
    except ConfigError as e:
        bad(f"fixed: {e}")
    knobs: list[Knob] = []
    for name, spec in search.items():
        check = lambda v, n=name: _check_value(n, v, fixed, set(search), bad)  # noqa: E731
        knobs.append(_parse_knob(name, spec, {k.name: k for k in knobs}, check, bad))
    space = SearchSpace(knobs, dict(fixed), [], source)
    starts = doc.get("start_from") or []
    if not isinstance(starts, list):
        bad("'start_from' must be a list of configurations")
    for k, point in enumerate(starts):
        if not isinstance(point, dict):
            bad(f"start_from[{k}] must map knobs to values")
        extra = sorted(set(point) - set(space.names))
        if extra:
            bad(f"start_from[{k}] sets {', '.join(extra)}, which the space does not search")
        try:
            space.config(point)
        except ConfigError as e:
            bad(f"start_from[{k}]: {str(e).split(': ', 1)[-1]}")
        for knob in space.knobs:  # a start point outside its knob's range would be tried anyway
            if knob.name in point and not knob.contains(point[knob.name]):
                where = (f"one of {list(knob.choices)}" if knob.distribution == "categorical"
                         else f"in [{knob.low}, {knob.high}]")
                bad(f"start_from[{k}]: {knob.name} = {reprlib.repr(point[knob.name])} is not {where}")
        space.start_from.append(space.active(point))
    return space


def _parse_knob(name: str, spec: Any, earlier: dict[str, Knob], check, bad) -> Knob:
    if not isinstance(spec, dict):
        bad(f"{name}: expected a mapping like {{distribution: uniform, low: 0.1, high: 1.0}}")
    unknown = sorted(set(spec) - {"distribution", "low", "high", "choices", "when"})
    if unknown:
        bad(f"{name}: unknown key(s) {', '.join(unknown)}")
    dist = spec.get("distribution")
    if dist not in DISTRIBUTIONS:
        bad(f"{name}: unknown distribution {dist!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    want = _FIELD_TYPES[name]
    when = _parse_when(name, spec.get("when"), earlier, bad)
    if dist == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            bad(f"{name}: categorical needs a non-empty list of choices")
        for c in choices:
            check(c)
        return Knob(name, dist, choices=tuple(choices), when=when)
    if want == "str":
        bad(f"{name}: a text field takes the categorical distribution, not {dist}")
    if dist in ("int", "log_int") and want != "int":
        bad(f"{name}: is a float field; use uniform or log_uniform, not {dist}")
    if dist in ("uniform", "log_uniform") and want == "int":
        bad(f"{name}: is an integer field; use int or log_int, not {dist}")
    low, high = spec.get("low"), spec.get("high")
    for label, v in (("low", low), ("high", high)):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            bad(f"{name}: {label} must be a number, got {reprlib.repr(v)}")
        if dist in ("int", "log_int") and not float(v).is_integer():
            bad(f"{name}: {label} must be an integer for {dist}, got {reprlib.repr(v)}")
    if low > high:
        bad(f"{name}: inverted range, low {low} > high {high}")
    if low == high:
        bad(f"{name}: empty range, low == high == {low} (put a constant under 'fixed')")
    if dist.startswith("log") and low <= 0:
        bad(f"{name}: {dist} needs low > 0, got {low}")
    check(low)
    check(high)
    return Knob(name, dist, float(low) if want == "float" else int(low), float(high) if want == "float" else int(high), when=when)


def _check_value(name: str, value: Any, fixed: dict, searched: set[str], bad) -> None:
    """A bound or choice must itself be a valid config value (e.g. a known fusion type)."""
    try:
        TrainConfig.from_dict({**fixed, name: value})
    except ConfigError as e:
        # A coupled check against another searched knob (temp_min <= temp_start) depends on
        # what the trial draws for that knob: it is checked per trial, not here.
        if not any(other in str(e) for other in searched - {name}):
            bad(f"{name}: {e}")


def _parse_when(name: str, text: Any, earlier: dict[str, Knob], bad) -> Condition | None:
    """One comparison of an earlier knob with a value it can take. Anything else would load and
    silently never hold, turning the knob off: a compound condition (its tail read as the value) or a
    value outside the parent's choices."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\w+)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*", str(text))
    if not m:
        bad(f"{name}: cannot read condition {text!r}; write it like \"unfreeze_depth > 0\"")
    knob, op, raw = m.groups()
    if knob not in earlier:
        bad(f"{name}: condition names {knob!r}, which must be a knob listed before it")
    if re.search(r"(==|!=|<|>)|\b(and|or|not)\b", raw):
        bad(f"{name}: condition {text!r} is compound; a condition compares one knob with one value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        bad(f"{name}: cannot read the value in condition {text!r}")
    parent = earlier[knob]
    if parent.distribution == "categorical":
        if op in ("==", "!=") and value not in parent.choices:
            bad(f"{name}: condition {text!r}: {reprlib.repr(value)} is not one of {knob}'s choices "
                f"{list(parent.choices)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        bad(f"{name}: condition {text!r}: {knob} is a number, compared with {reprlib.repr(value)}")
    return Condition(knob, op, value)
