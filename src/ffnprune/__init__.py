"""ffnprune: structured pruning of the MLP neurons of decoder-only language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ffnprune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from ffnprune.errors import FfnpruneError  # noqa: E402
from ffnprune.io.pruned_dir import export_uniform, load_pruned, save_pruned  # noqa: E402
from ffnprune.models import load_model  # noqa: E402

__all__ = ["FfnpruneError", "__version__", "export_uniform", "load_model", "load_pruned", "save_pruned"]
