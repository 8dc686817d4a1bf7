"""Publish GGUF files and their model card to the Hugging Face Hub (`huggingface_hub`).

Nothing is uploaded unless asked for by name (`edge run --publish USER/NAME --private` or
`--public`); the visibility must be chosen explicitly. The token comes from `hf auth login`
(or HF_TOKEN); HF_ENDPOINT points the client elsewhere (the tests use a local stand-in).

    from edge.publish import publish
    url = publish("me/gemma-3-270m-mychats", [Path("x-Q4_K_XL.gguf")], card_text, private=True)
"""

from __future__ import annotations

import re
from pathlib import Path

from edge.errors import EdgeError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def check_repo_id(repo: str, flag: str = "--publish") -> str:
    if not isinstance(repo, str) or not REPO_ID.fullmatch(repo) or ".." in repo:
        raise EdgeError(f"{flag} {repo!r} must be a Hugging Face repo id like USER/NAME")
    return repo


def hf_api():
    """The Hugging Face client (a function so tests can hand in their own)."""
    from huggingface_hub import HfApi

    return HfApi()


def publish(repo: str, files: list[Path], card: str, *, private: bool, say=print) -> str:
    """Create (or reuse) the model repo and upload `files` and the card as README.md in one commit."""
    from huggingface_hub import CommitOperationAdd

    check_repo_id(repo)
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise EdgeError(f"cannot publish: {missing[0]} does not exist")
    api = hf_api()
    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8"))]
    ops += [CommitOperationAdd(path_in_repo=Path(f).name, path_or_fileobj=str(f)) for f in files]
    try:
        url = api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        say(f"publishing {len(files)} file(s) and README.md to {repo} ({'private' if private else 'public'})")
        api.create_commit(repo_id=repo, repo_type="model", operations=ops,
                          commit_message=f"edge: {', '.join(Path(f).name for f in files)}")
    except EdgeError:
        raise
    except Exception as e:  # huggingface_hub raises several types for auth/network problems
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise EdgeError(f"publishing to Hugging Face repo {repo} failed: {first}; log in with "
                        "`hf auth login` (a write token) and check the network") from None
    return str(url)
