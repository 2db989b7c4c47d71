"""Options declared once: a config dataclass field carries its default, its help and how to parse it.

`option(...)` makes such a field; `add_options` turns the fields of a config class into
command-line flags (help included), and `pick` builds the config back from parsed arguments.
The flag of a field is `--field-name` unless the field names another (`flag="test-seed"`),
which keeps two configs on one command from sharing a flag by accident.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, field, fields
from typing import Any, Callable


def option(default: Any, help: str, *, parse: Callable[[str], Any] | None = None,
           choices: tuple | None = None, flag: str | None = None, at_least: float | None = None) -> Any:
    """A dataclass field with its command-line help; `parse` turns the flag's text into a value.

    `at_least`: the smallest value allowed (None, where a field may be None, is always allowed);
    `check_options` enforces it and `choices`, naming the flag.
    """
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices, "flag": flag,
                                            "at_least": at_least})


def flag_name(f) -> str:
    """The flag of a field, without the leading dashes."""
    return f.metadata.get("flag") or f.name.replace("_", "-")


def dest(f) -> str:
    """Where argparse stores a field's value."""
    return flag_name(f).replace("-", "_")


def check_options(config) -> None:
    """Raise ValueError naming the flag of the first field of `config` that is out of its range.

    Config classes call it from `__post_init__`, so the Python API and the command line refuse the
    same values with the same message (e.g. "--ways must be at least 1, got 0").
    """
    for f in fields(config):
        value, low, choices = getattr(config, f.name), f.metadata.get("at_least"), f.metadata.get("choices")
        if isinstance(value, float) and not math.isfinite(value):  # float("nan") parses, and would train NaNs
            raise ValueError(f"--{flag_name(f)} must be a finite number, got {value}")
        if low is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise ValueError(f"--{flag_name(f)} must be at least {low}, got {value}")
        if choices and value not in choices:
            raise ValueError(f"--{flag_name(f)} must be one of {', '.join(map(str, choices))}, got {value!r}")


def parse_bool_or_path(text: str) -> bool | str:
    """"true" / "false" (any case), or a path kept as text."""
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_int_tuple(text: str) -> tuple[int, ...]:
    """Comma-separated integers, e.g. "10000,20000"; "" is the empty tuple."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def int_tuple(at_least: int, at_most: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """A parser of comma-separated integers, each in at_least..at_most, at least one of them."""
    span = f"{at_least}..{at_most}" if at_most is not None else f"at least {at_least}"

    def parse(text: str) -> tuple[int, ...]:
        values = parse_int_tuple(text)
        bad = [v for v in values if v < at_least or (at_most is not None and v > at_most)]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, each {span}, got {text!r}")
        return values

    parse.__name__ = "int_list"
    return parse


def none_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser that reads "none" (any case) as None and anything else with `kind`."""
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = f"none_or_{getattr(kind, '__name__', 'value')}"
    return parse


def _shown(value: Any) -> str:
    """A default as one would type it on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass `cls` (fields named in `skip` excepted), with its help."""
    for f in fields(cls):
        if f.name in skip:
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help: declare it with option(default, help)")
        default = f.default if f.default is not MISSING else None
        kwargs: dict[str, Any] = {"default": default, "dest": dest(f),
                                  "help": f"{f.metadata['help']} (default: {_shown(default)})".replace("%", "%%")}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("parse"):
            kwargs["type"] = f.metadata["parse"]
        elif isinstance(default, bool):  # --flag / --no-flag
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = f.metadata["help"].replace("%", "%%") + " (default: %(default)s)"
        elif default is not None:
            kwargs["type"] = type(default)
        else:
            raise TypeError(f"{cls.__name__}.{f.name} defaults to None: give option(..., parse=...)")
        parser.add_argument("--" + flag_name(f), **kwargs)


def pick(args: argparse.Namespace, cls, **overrides):
    """An instance of `cls` from the parsed flags of its fields (fields without a flag keep their default)."""
    values = {f.name: getattr(args, dest(f)) for f in fields(cls) if hasattr(args, dest(f))}
    return cls(**{**values, **overrides})
