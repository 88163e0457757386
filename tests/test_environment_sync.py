"""pyproject.toml (dependencies and extras) and environment.yml list the same pinned dependencies."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_dependencies_in_sync():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for reqs in project.get("optional-dependencies", {}).values() for r in reqs]
    py = {_norm(r) for r in project["dependencies"] + extras}
    env_lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, ln in enumerate(env_lines) if ln.strip() == "- pip:")
    env = {_norm(ln.strip()[2:]) for ln in env_lines[start + 1:] if ln.strip().startswith("- ") and "==" in ln}
    assert py == env, f"only in pyproject: {sorted(py - env)}; only in environment.yml: {sorted(env - py)}"
    assert "torch==2.13.0" in py
