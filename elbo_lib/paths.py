"""Where the workbook keeps things, and how it writes them: the repository root, the cache directory
(``ELBO_LIB_CACHE`` moves it) and atomic writes (a temporary file renamed into place, so an
interrupted run never leaves a half-written file behind)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("ELBO_LIB_CACHE", REPO_ROOT / ".cache" / "elbo_lib"))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path`` (same suffix, so that writers which add
    one, such as ``np.savez``, keep the name), then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, obj, **kw) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, **kw))
