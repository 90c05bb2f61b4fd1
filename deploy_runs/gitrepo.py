"""Publishing a directory as commits of a git repository (the sample apps, in the demo and the
tests, become real repositories this way)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_ENV = {
    "GIT_AUTHOR_NAME": "deploy-runs", "GIT_AUTHOR_EMAIL": "deploy-runs@localhost",
    "GIT_COMMITTER_NAME": "deploy-runs", "GIT_COMMITTER_EMAIL": "deploy-runs@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def publish(source: Path, bare_repo: Path, message: str, branch: str = "main") -> str:
    """Make the branch of `bare_repo` hold exactly the files of `source`, as a new commit.

    Creates the bare repository when missing. Returns the new commit SHA.
    """
    if not (bare_repo / "HEAD").exists():
        bare_repo.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare_repo))
    with tempfile.TemporaryDirectory(prefix="deploy-runs-publish-") as tmp:
        work = Path(tmp) / "work"
        _git("clone", "--quiet", str(bare_repo), str(work))
        if _git("ls-remote", "--heads", str(bare_repo), branch):
            _git("checkout", "--quiet", branch, cwd=work)
        else:
            _git("checkout", "--quiet", "--orphan", branch, cwd=work)
        for entry in work.iterdir():
            if entry.name != ".git":
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        # symbolic links are committed as links, not as copies of what they point to
        shutil.copytree(source, work, dirs_exist_ok=True, symlinks=True)
        _git("add", "--all", cwd=work)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=work)
        _git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
        return _git("rev-parse", "HEAD", cwd=work)


def head(bare_repo: Path, branch: str = "main") -> str:
    return _git("--git-dir", str(bare_repo), "rev-parse", f"refs/heads/{branch}")
