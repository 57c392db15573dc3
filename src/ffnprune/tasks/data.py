"""Where the offline task data lives: --data, $FFNPRUNE_DATA, or ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "FFNPRUNE_DATA"


def default_data_dir() -> Path | None:
    """The first of $FFNPRUNE_DATA, ./../shared/data and the source checkout's ../shared/data that exists."""
    candidates = []
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]))
    candidates.append(Path.cwd().parent / "shared" / "data")
    candidates.append(Path(__file__).resolve().parents[4] / "shared" / "data")
    return next((path for path in candidates if path.is_dir()), None)
