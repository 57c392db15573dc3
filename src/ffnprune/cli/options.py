"""Command-line options mapped onto the typed configuration dataclasses (see ffnprune.config).

Precedence: dataclass defaults < a YAML file (--config, or a resumed run's run.yaml) < flags on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses

from ffnprune.config import build_config, key, leaf_fields, read_yaml


def add_config_arguments(parser: argparse.ArgumentParser, config_class) -> None:
    """One option per leaf field; fields of a nested section (schedule, penalty, ...) are listed under its name."""
    sections = {}
    for path, field, kind in leaf_fields(config_class):
        target = parser
        if len(path) > 1:
            target = sections.setdefault(path[0], parser.add_argument_group(f"{path[0]} options"))
        meta = field.metadata
        default = None if field.default is dataclasses.MISSING else field.default
        shown = "" if default is None or kind is bool else f" (default: {default})"
        if meta.get("positional"):
            target.add_argument(key(field), type=kind, nargs="?", default=argparse.SUPPRESS, help=meta["help"])
        elif kind is bool:
            target.add_argument("--" + key(field).replace("_", "-"), dest=key(field), action="store_true",
                                default=argparse.SUPPRESS, help=meta["help"])
        else:
            target.add_argument("--" + key(field).replace("_", "-"), dest=key(field), type=kind,
                                default=argparse.SUPPRESS, choices=meta.get("choices"), help=meta["help"] + shown)


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
