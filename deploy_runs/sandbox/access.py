"""Who can log in: the non-root ``deploy`` user, the client key, the host keys."""

from __future__ import annotations

import grp
import logging
import os
import pwd
from pathlib import Path

from .layout import ENV_DIR, Layout, mkdir
from .processes import SandboxError, run, write_atomic

log = logging.getLogger("deploy_runs.sandbox")

DEPLOY_USER = "deploy"
# A second login without Docker access: what a server where the deploy user was never added to
# the docker group looks like (tests of that failure use it).
NO_DOCKER_USER = "deploy-nodocker"
CLIENT_KEY_COMMENT = "deploy-runs-sandbox"


def ensure_deploy_user() -> pwd.struct_passwd:
    """The ``deploy`` user exists, is in the docker group and its account is not locked."""
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        run(["groupadd", "--system", "docker"])
        docker_gid = grp.getgrnam("docker").gr_gid
    try:
        pw = pwd.getpwnam(DEPLOY_USER)
    except KeyError:
        log.info("creating user %s", DEPLOY_USER)
        run(["useradd", "-m", "-s", "/bin/bash", "-G", "docker", DEPLOY_USER])
        pw = pwd.getpwnam(DEPLOY_USER)
    if pw.pw_gid != docker_gid and DEPLOY_USER not in grp.getgrgid(docker_gid).gr_mem:
        run(["usermod", "-aG", "docker", DEPLOY_USER])
    _unlock(DEPLOY_USER)
    try:
        pwd.getpwnam(NO_DOCKER_USER)
    except KeyError:
        log.info("creating user %s", NO_DOCKER_USER)
        run(["useradd", "-m", "-s", "/bin/bash", NO_DOCKER_USER])
    _unlock(NO_DOCKER_USER)
    return pw


def _unlock(user: str) -> None:
    # useradd leaves the password "!" (locked), and sshd with UsePAM no refuses a locked account
    # even for key logins; "*" means "no password" without the lock.
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user and fields[1].startswith("!"):
            run(["usermod", "-p", "*", user])


def ensure_keypair(path: Path, comment: str = "") -> str:
    """An ed25519 key pair at ``path`` (generated once, kept for good); returns the public key
    line without comment."""
    if not path.exists():
        mkdir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        for p in (tmp, Path(f"{tmp}.pub")):
            p.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(tmp)])
        os.replace(f"{tmp}.pub", f"{path}.pub")
        os.replace(tmp, path)
    pub = Path(f"{path}.pub")
    if not pub.exists():
        write_atomic(pub, run(["ssh-keygen", "-y", "-f", str(path)]).stdout)
    return public_key_line(pub)


def public_key_line(pub: Path) -> str:
    """``"ssh-ed25519 AAAA..."`` from a .pub file (comment dropped); ``""`` if there is none."""
    try:
        parts = pub.read_text().split()
    except OSError:
        return ""
    return " ".join(parts[:2])


def ensure_client_key(lay: Layout, pw: pwd.struct_passwd) -> None:
    """The client key, authorised for ``deploy``, ``deploy-nodocker`` and ``root`` on every
    sandbox host."""
    public = ensure_keypair(lay.client_key, CLIENT_KEY_COMMENT)
    mkdir(lay.authorized_dir)
    want = f"{public} {CLIENT_KEY_COMMENT}\n"
    for user in (DEPLOY_USER, NO_DOCKER_USER, "root"):
        f = lay.authorized_dir / user
        if not f.exists() or f.read_text() != want:
            write_atomic(f, want, 0o644)
    # sshd reads authorized keys as the user who logs in
    if not _readable_by(lay.authorized_dir / DEPLOY_USER, pw):
        raise SandboxError(
            f"user {DEPLOY_USER} cannot read {lay.authorized_dir / DEPLOY_USER}: every directory "
            f"above it must be traversable by others (choose another {ENV_DIR})"
        )


def _readable_by(path: Path, pw: pwd.struct_passwd) -> bool:
    """Whether the user can reach and read ``path`` by the owner/group/other bits (ACLs aside)."""
    gids = {pw.pw_gid, *(g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem)}

    def allowed(st: os.stat_result, bit: int) -> bool:
        if st.st_uid == pw.pw_uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid in gids:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)

    return allowed(path.stat(), 4) and all(allowed(p.stat(), 1) for p in path.parents)
