"""``raytower tune --config tune.yaml``: the tune flags a team keeps in its repository.

    # tune.yaml: keys are the flags' names as SearchSettings spells them (dashes or underscores)
    data: ml-100k
    space: quick
    num_samples: 16
    max_epochs: 12
    truthful_pruning: false        # a switch: true or false
    logger: [mlflow]

Each value becomes that flag's default, so a flag given on the command line overrides the file
(``--logger`` adds to the file's list). An unknown key, or a value of the wrong type, is one line
naming the file. Standard library and PyYAML only: the command line reads it before torch or Ray.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from raytower.errors import ConfigError

NOT_IN_A_FILE = ("help", "config", "func", "parser")


def read_settings_file(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The flag values the file gives, keyed by the parser's dests, checked as the flags are."""
    from raytower._io import load_user_yaml, read_user_text

    doc = load_user_yaml(read_user_text(path, "tune settings file"), path, "tune settings file")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"a tune settings file maps flag names to values, got a {type(doc).__name__}", path)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_IN_A_FILE}
    # a key is a dest (time_budget_s) or a long flag's name (time-budget, no-truthful-pruning)
    by_flag = {o.lstrip("-").replace("-", "_"): a for a in actions.values() for o in a.option_strings if o[:2] == "--"}
    values, keys = {}, {}
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        action = actions.get(name) or by_flag.get(name)
        if action is None:
            raise ConfigError(f"unknown key {key!r}; a tune settings file takes {', '.join(sorted(actions))}", path)
        value = _value(action, key, value, path)
        if isinstance(action, argparse._StoreFalseAction) and name != action.dest:
            value = not value  # no_truthful_pruning: true -> truthful_pruning False
        if action.dest in values:  # time-budget and time_budget_s: the last one won, silently
            raise ConfigError(f"{key} and {keys[action.dest]} name the same setting ({action.dest}): give it once",
                              path)
        values[action.dest], keys[action.dest] = value, key
    if values.get("logger"):
        from raytower.tune._plugins import LOGGERS, parse_loggers

        unknown = [n for n in parse_loggers(values["logger"]) if n not in LOGGERS]
        if unknown:
            raise ConfigError(f"logger: {unknown[0]!r} is none of {', '.join(LOGGERS)}", path)
    return values


def _value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """``value`` as the flag would parse it, or a ConfigError naming the key."""
    def wrong(what: str) -> ConfigError:
        return ConfigError(f"{key}: must be {what}, got {type(value).__name__} {value!r}"[:200], path)

    if value is None and action.default is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise wrong("a count (0, 1, 2)")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, key, item, wrong) for item in items]
    return _scalar(action, key, value, wrong)


def _scalar(action: argparse.Action, key: str, value: Any, wrong) -> Any:
    if isinstance(value, (bool, list, dict)) or value is None:
        raise wrong(_kind(action))
    try:
        converted = action.type(str(value)) if action.type else str(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise wrong(_kind(action)) from None
    if action.choices is not None and converted not in action.choices:
        raise wrong(f"one of {', '.join(map(str, action.choices))}")
    return converted


def _kind(action: argparse.Action) -> str:
    name = getattr(action.type, "__name__", "str")
    return {"int": "an integer", "float": "a number", "str": "a string", "positive_int": "a positive integer",
            "non_negative_int": "an integer >= 0", "fraction": "a number in [0, 1)"}.get(name, name)


def apply_settings_file(args: argparse.Namespace) -> frozenset[str]:
    """``args`` re-parsed with the file's values as the defaults (``args.parser``: the tune command's
    parser); returns the dests the file named."""
    if not getattr(args, "config", None):
        return frozenset()
    if not Path(args.config).is_file():
        what = "not a file" if Path(args.config).exists() else "no such file"
        raise ConfigError(f"{what}: --config takes a tune settings file (YAML)", args.config)
    values = read_settings_file(args.config, args.parser)
    args.parser.set_defaults(**values)
    _check_values(args)
    argv = args.argv
    vars(args).update(vars(args.parser.parse_args(argv[1:])))
    args.argv = argv
    return frozenset(values)



def _check_values(args: argparse.Namespace) -> None:
    """The file's values checked as a search checks its settings, in the file's names: "--num-samples
    must be >= 1" for a flag nobody typed sent the reader to the command line."""
    from dataclasses import fields

    from raytower.errors import RaytowerError
    from raytower.tune.settings import SearchSettings

    defaults = args.parser.parse_args([])  # the command's defaults, the file's values over them
    try:
        SearchSettings(**{f.name: getattr(defaults, f.name) for f in fields(SearchSettings)}).validate(api=True)
    except RaytowerError as e:
        raise ConfigError(str(e), args.config) from None
