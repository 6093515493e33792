"""Where things live: the user cache and the offline data folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir(*parts: str) -> Path:
    """A folder under the editscale cache ($EDITSCALE_CACHE, else ~/.cache/editscale), created."""
    root = Path(os.environ.get("EDITSCALE_CACHE", Path.home() / ".cache" / "editscale"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data() -> Path | None:
    """The offline data folder, or None when there is none.

    Looked for in order: $EDITSCALE_DATA, then `../shared/data` beside the working
    directory and beside the repository (the layout this project is developed in).
    """
    env = os.environ.get("EDITSCALE_DATA")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise FileNotFoundError(f"EDITSCALE_DATA={env} is not a folder; unset it or point it at the data folder")
        return path
    for base in (Path.cwd(), REPO_ROOT):
        for up in (base, *base.parents[:2]):
            candidate = up / "shared" / "data"
            if (candidate / "counterfact").is_dir():
                return candidate
    return None
