"""ffnprune's own messages go through the `ffnprune` logger: progress at INFO, notices at WARNING.

The command line shows INFO on stderr (`--quiet`: warnings only); a library user configures logging as they like.
Other libraries' warnings keep their own labels; only FfnpruneWarning is shown as `ffnprune: warning:`.
"""

from __future__ import annotations

import logging
import sys
import warnings

from ffnprune.errors import FfnpruneWarning

logger = logging.getLogger("ffnprune")


def say(message: str) -> None:
    """Progress of long work (loading, calibration, training, evaluation)."""
    logger.info(message)


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar on stderr, shown when the `ffnprune` logger shows INFO (the command line without --quiet)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not logger.isEnabledFor(logging.INFO), leave=False, **kwargs)


def configure_cli_logging(quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    shown = getattr(warnings.showwarning, "passes_to", warnings.showwarning)  # wrap once, however often called

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FfnpruneWarning):
            print(f"ffnprune: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    show.passes_to = shown
    warnings.showwarning = show
