"""Command-line options mapped onto the typed configuration dataclasses (see ffnprune.config).

Precedence: dataclass defaults < a YAML file (--config, or a resumed run's run.yaml) < flags on the command line.
argparse only collects the strings; the config classes validate them (types, ranges, choices), the same way they
validate YAML values and Python arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ffnprune.config import build_config, flag, key, leaf_fields, read_yaml


def _choices(kind) -> tuple[str, ...]:
    """The allowed values of a Literal (or Optional Literal) type, else ()."""
    if typing.get_origin(kind) is typing.Literal:
        return typing.get_args(kind)
    return tuple(choice for arg in typing.get_args(kind) for choice in _choices(arg))


def _is_bool(kind) -> bool:
    return kind is bool or bool in typing.get_args(kind)


def add_config_arguments(parser: argparse.ArgumentParser, config_class) -> None:
    """One option per leaf field (booleans also as --no-NAME); fields of a nested section (schedule, penalty, ...)
    are listed under its name."""
    sections = {}
    for path, field, kind in leaf_fields(config_class):
        target = parser
        if len(path) > 1:
            target = sections.setdefault(path[0], parser.add_argument_group(f"{path[0]} options"))
        meta = field.metadata
        default = None if field.default is dataclasses.MISSING else field.default
        choices = _choices(kind)
        shown = f" [{'|'.join(choices)}]" if choices else ""
        shown += "" if default is None or _is_bool(kind) else f" (default: {default})"
        name = flag(field.name)
        if meta.get("positional"):
            target.add_argument(key(field), nargs="?", default=argparse.SUPPRESS, help=meta["help"])
        elif _is_bool(kind):
            target.add_argument(name, dest=key(field), action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=meta["help"])
        else:
            target.add_argument(name, dest=key(field), default=argparse.SUPPRESS, metavar=key(field).upper(),
                                help=meta["help"] + shown)


def given_options(config_class, args: argparse.Namespace) -> dict:
    """The config options actually given on the command line (the others were suppressed)."""
    known = {key(field) for _, field, _ in leaf_fields(config_class)}
    return {name: value for name, value in vars(args).items() if name in known}


def config_from_args(config_class, args: argparse.Namespace, base: dict | None = None):
    values = dict(base or {})
    if getattr(args, "config", None):
        values.update(read_yaml(args.config, config_class))
    values.update(given_options(config_class, args))
    return build_config(config_class, values)
