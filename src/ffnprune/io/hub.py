"""`--push-to-hub REPO`: upload a saved pruned directory (model card included) to the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path

from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import MARKER


def check_push(repo: str) -> None:
    """Everything a push needs that can be known before the work starts."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise FfnpruneError(f"--push-to-hub {repo!r} is not a hub repository id (OWNER/NAME): {error}") from None
    if repo.count("/") != 1:
        raise FfnpruneError(f"--push-to-hub {repo!r}: give OWNER/NAME")
    if constants.HF_HUB_OFFLINE:
        raise FfnpruneError("--push-to-hub needs the network, and HF_HUB_OFFLINE is set; prune without it and "
                            "upload the directory later with `hf upload REPO DIR`")
    if get_token() is None:
        raise FfnpruneError("--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")


def push_directory(directory: str | Path, repo: str, private: bool = True) -> str:
    """Create the repository if needed and upload the directory; returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(directory), repo_id=repo, repo_type="model", ignore_patterns=[MARKER],
                          commit_message=f"Upload {Path(directory).name}, pruned with ffnprune")
    except Exception as error:  # network and permission errors come in many types
        raise FfnpruneError(f"could not push {directory} to {repo}: {error}. The pruned model is saved in "
                            f"{directory}; retry with `hf upload {repo} {directory}`") from error
    return str(url)
