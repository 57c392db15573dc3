"""Every model ffnprune loads is loaded strictly.

transformers initialises a missing or mismatched tensor randomly and only reports it (a report the CLI used to
silence); a pruned model built on such a tensor would be silently wrong. Here any missing, unexpected or
mismatched tensor, and any conversion error, stops the load with the tensors named.
"""

from __future__ import annotations

from ffnprune.errors import FfnpruneError

SHOWN = 6


def _names(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def check_loading_info(info: dict, location) -> None:
    """Raise FfnpruneError if transformers' loading info reports any tensor it did not load exactly."""
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing tensors {_names(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected tensors {_names(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        mismatched = [f"{key} (checkpoint {tuple(saved)}, model {tuple(expected)})"
                      for key, saved, expected in sorted(info["mismatched_keys"])]
        problems.append(f"tensors of the wrong shape {_names(mismatched)}")
    if info.get("conversion_errors"):
        problems.append(f"tensors that could not be converted {_names(info['conversion_errors'])}")
    if info.get("error_msgs"):
        problems.append("; ".join(info["error_msgs"][:SHOWN]))
    if problems:
        raise FfnpruneError(
            f"the checkpoint in {location} does not match its model: {'; '.join(problems)}. Loading it anyway would "
            "initialise those tensors randomly. The checkpoint is incomplete, corrupt or of another architecture: "
            "restore it from a copy, or save it again with save_pretrained"
        )


def load_failure(failure: str, error: Exception) -> FfnpruneError:
    """The error for a load that failed: `failure` with {error} replaced by what the reader raised."""
    return FfnpruneError(failure.replace("{error}", str(error)))


def from_pretrained_strictly(model_class, location, failure: str | None = None, **kwargs):
    """`model_class.from_pretrained(location, **kwargs)`, refusing any tensor that was not loaded exactly. With
    `failure` (a message in which {error} stands for the error), an error of the load itself (a damaged file raises
    many types) becomes an FfnpruneError saying so."""
    try:
        model, info = model_class.from_pretrained(location, output_loading_info=True, **kwargs)
    except Exception as error:
        if failure is None:
            raise
        raise load_failure(failure, error) from error
    check_loading_info(info, location)
    return model
