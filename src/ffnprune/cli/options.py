"""Command-line options generated from the typed configuration dataclasses, so the two never drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import typing


def add_config_arguments(parser: argparse.ArgumentParser, config_class) -> None:
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        kind = hints[field.name]
        if meta.get("positional"):
            parser.add_argument(field.name, type=kind, help=meta.get("help"))
            continue
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action="store_true", help=meta.get("help"))
        else:
            default = None if field.default is dataclasses.MISSING else field.default
            parser.add_argument(flag, dest=field.name, type=kind, default=default, required=meta.get("required", False),
                                help=meta.get("help") + ("" if default is None else f" (default: {default})"))


def config_from_args(config_class, args: argparse.Namespace):
    return config_class(**{field.name: getattr(args, field.name) for field in dataclasses.fields(config_class)})
