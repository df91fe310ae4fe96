"""Opt-in publishing to the Hugging Face Hub: the synthetic dataset folder and D* as a PEFT adapter.

Both folders are already in the Hub's layout (a card with YAML metadata, `data/*.parquet`; PEFT's
`adapter_config.json` + `adapter_model.safetensors`), so publishing is `huggingface_hub`'s
`create_repo` + `upload_folder`: an unchanged folder makes no new commit. The token comes from where
`huggingface_hub` looks (HF_TOKEN, `hf auth login`); `check_hub_access` fails before any heavy work.
"""

from __future__ import annotations

import logging
from pathlib import Path

from axolotl_domino.errors import DominoError

LOG = logging.getLogger("axolotl.integrations.domino.publish")

# What of the adapter folder goes to the Hub: D* and its card, S and the run's record; not checkpoints, not the
# stage marker, not `keep: best`'s snapshots.
ADAPTER_FILES = [
    "README.md", "adapter_config.json", "adapter_model.safetensors", "sample_tokens.safetensors",
    "domino_induction.json", "induction_report.json", "induction_report.png",
]
DATASET_FILES = ["README.md", "data/*.parquet"]


class HubError(DominoError):
    """Publishing cannot work from here: offline, no token, or the Hub refused."""


def check_hub_access(key: str) -> None:
    """`key` (e.g. domino.dataset.push_to_hub) asks for a push: offline mode or a missing token is an error now."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"{key}: the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE=1), so nothing can be pushed; unset "
            f"HF_HUB_OFFLINE, or remove {key} and push the folder later with `hf upload`."
        )
    if get_token() is None:
        raise HubError(
            f"{key}: no Hugging Face token; run `hf auth login` or export HF_TOKEN with a token that can write to "
            "the repository, or remove the key."
        )


def push_folder(folder: Path, repo_id: str, repo_type: str, private: bool, patterns: list[str], key: str,
                replace: list[str] | None = None) -> str:
    """Create `repo_id` if needed and upload `folder`'s files matching `patterns`, deleting the repository's files
    matching `replace` in the same commit (a dataset's earlier parquet files); return the repository URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type=repo_type, allow_patterns=patterns,
            delete_patterns=replace, commit_message=f"axolotl-domino: {folder.name}",
        )
    except HfHubHTTPError as exc:
        raise HubError(f"{key}: the Hub refused the push to {repo_id} ({exc}); check the token's write access.") from exc
    LOG.info("domino: pushed %s to %s", folder, url)
    return str(url)
