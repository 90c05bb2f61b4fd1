"""Pure builders of every command deploy-runs runs on a server.

Each builder returns a `Command` (an argument list) and runs nothing. Quoting happens in exactly
one place, `Command.__str__`, so what the log shows is exactly what ran. Remote paths are relative
to the SSH user's home directory (where an SSH command starts), so no `~` expansion is needed.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LABEL_PREFIX = "deploy-runs"
ROOT = "deploy-runs"


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("empty command")

    def __str__(self) -> str:
        return shlex.join(self.argv)


def cmd(*argv: str | int) -> Command:
    return Command(tuple(str(a) for a in argv))


@dataclass(frozen=True)
class AppLayout:
    """Where an application's files live on the server, relative to the user's home."""

    app: str

    @property
    def root(self) -> str:
        return f"{ROOT}/apps/{self.app}"

    @property
    def repo(self) -> str:
        return f"{self.root}/repo"

    @property
    def provisioned_marker(self) -> str:
        return f"{self.root}/provisioned"

    @property
    def secrets_dir(self) -> str:
        """Where the services' env files live: a directory only the deploy user may enter
        (0700), so a file in it is never readable by others, not even while it is written."""
        return f"{self.root}/secrets"

    def env_file(self, service: str) -> str:
        return f"{self.secrets_dir}/{service}.env"

    def in_repo(self, path: str) -> str:
        return self.repo if path in ("", ".") else f"{self.repo}/{path}"


def image_name(app: str, service: str) -> str:
    return f"{ROOT}/{app}-{service}"


def image_tag(app: str, service: str, build_inputs: str) -> str:
    """Images are tagged by a hash of their build inputs: same inputs, same image."""
    return f"{image_name(app, service)}:{build_inputs[:12]}"


def previous_name(container: str) -> str:
    """Where the running container waits while its replacement starts (and stays, stopped,
    if the replacement turns out unhealthy)."""
    return f"{container}-previous"


def container_name(app: str, service: str) -> str:
    return f"{app}-{service}"


def labels(**values: str) -> dict[str, str]:
    return {f"{LABEL_PREFIX}.{key}": value for key, value in values.items()}


# Provisioning -------------------------------------------------------------------------------

def read_file(path: str) -> Command:
    return cmd("cat", "--", path)


def make_dirs(*paths: str) -> Command:
    return cmd("mkdir", "-p", "--", *paths)


def make_private_dir(path: str) -> Command:
    """`path` as a directory only its owner may enter (made 0700, or set to it)."""
    return cmd("install", "-d", "-m", "0700", "--", path)


def remove_env_files(directory: str, keep: Iterable[str] = ()) -> Command:
    """Remove the `*.env` files of `directory` but those named in `keep` (the services that
    still have secrets)."""
    args = ["find", directory, "-maxdepth", "1", "-type", "f", "-name", "*.env"]
    for name in keep:
        args += ["!", "-name", name]
    return Command((*args, "-delete"))


def docker_server_version() -> Command:
    return cmd("docker", "version", "--format", "{{.Server.Version}}")


def git_version() -> Command:
    return cmd("git", "--version")


# Source -------------------------------------------------------------------------------------

def git_is_repo(repo: str) -> Command:
    return cmd("git", "-C", repo, "rev-parse", "--git-dir")


def git_clone(url: str, dest: str) -> Command:
    return cmd("git", "clone", "--no-checkout", "--", url, dest)


def git_fetch(repo: str, url: str) -> Command:
    """The repository's branches (as `origin/BRANCH`, deleted ones pruned) and tags, from `url`
    itself rather than the checkout's `origin`: a changed repository URL needs no command."""
    return cmd("git", "-C", repo, "fetch", "--force", "--prune", "--tags", "--", url,
               "+refs/heads/*:refs/remotes/origin/*")


def _revision(rev: str) -> str:
    """A revision argument that git cannot take for an option. (`rev-parse` learned
    `--end-of-options` only in git 2.30; servers run older ones, e.g. 2.25 on Ubuntu 20.04,
    where it is taken for a revision and every lookup fails.)"""
    if not rev or rev.startswith("-"):
        raise ValueError(f"not a git revision: {rev!r}")
    return rev


def git_resolve(repo: str, rev: str) -> Command:
    return cmd("git", "-C", repo, "rev-parse", "--verify", "--quiet",
               _revision(f"{rev}^{{commit}}"))


def git_checkout(repo: str, commit: str) -> Command:
    return cmd("git", "-C", repo, "checkout", "--force", "--detach", commit)


def git_clean(repo: str) -> Command:
    return cmd("git", "-C", repo, "clean", "-ffdxq")


def git_rev_parse(repo: str, revs: list[str]) -> Command:
    return cmd("git", "-C", repo, "rev-parse", *map(_revision, revs))


def git_changed_files(repo: str, old: str, new: str, paths: list[str]) -> Command:
    return cmd("git", "-C", repo, "diff", "--name-only", old, new, "--", *paths)


def tree_rev(commit: str, path: str) -> str:
    """The git object of `path` at `commit` (a tree for a directory, a blob for a file)."""
    return f"{commit}^{{tree}}" if path in ("", ".") else f"{commit}:{path}"


def symbolic_links(repo: str) -> Command:
    """Every symbolic link of the checkout (not of .git) as `PATH<TAB>TARGET` lines."""
    return cmd("find", repo, "-path", f"{repo}/.git", "-prune", "-o", "-type", "l",
               "-printf", "%p\t%l\n")


def links_leaving(repo: str, listing: str) -> list[tuple[str, str]]:
    """The (link, target) pairs of `symbolic_links` output that point outside `repo`: an
    absolute target, or a relative one that climbs out of the checkout (resolved as text, so
    a link through another link is judged by each link alone)."""
    leaving = []
    for line in listing.splitlines():
        path, sep, target = line.partition("\t")
        if not sep:
            continue
        inside = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        if posixpath.isabs(target) or not (inside == repo or inside.startswith(repo + "/")):
            leaving.append((path.removeprefix(repo + "/"), target))
    return leaving


def git_commit_info(repo: str, commit: str) -> Command:
    return cmd("git", "-C", repo, "log", "-1", "--format=%H%n%s", commit)


# Docker -------------------------------------------------------------------------------------

def _label_args(values: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += ["--label", f"{key}={value}"]
    return args


def docker_build(tag: str, dockerfile: str, context: str, label_values: Mapping[str, str],
                 build_args: Mapping[str, str] | None = None) -> Command:
    args: list[str] = []
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    # --force-rm: a failed or stopped build leaves no exited intermediate container behind
    return cmd("docker", "build", "--tag", tag, "--file", dockerfile, "--force-rm", *args,
               *_label_args(label_values), context)


def docker_image_tags(tags: list[str]) -> Command:
    """The tags of those of `tags` that exist, one JSON list per image found (looked up by
    name: `docker image ls --filter reference=...` reads every image on the engine, 0.2 s
    with ~2,600 images, measured). Missing ones are named on stderr and the exit code is 1."""
    return cmd("docker", "image", "inspect", "--format", "{{json .RepoTags}}", "--", *tags)


CONTAINER_LIST_FORMAT = ('{{.Names}}\t{{.Label "deploy-runs.config"}}\t'
                         '{{.Label "deploy-runs.commit"}}\t{{.State}}\t{{.ID}}\t{{.Ports}}')


def docker_app_containers(app: str) -> Command:
    return cmd("docker", "ps", "--all", "--no-trunc", "--filter",
               f"label={LABEL_PREFIX}.app={app}", "--format", CONTAINER_LIST_FORMAT)


def docker_app_images(app: str) -> Command:
    """The app's image tags (its builds carry the app's label), one per line."""
    return cmd("docker", "image", "ls", "--filter", f"label={LABEL_PREFIX}.app={app}",
               "--format", "{{.Repository}}:{{.Tag}}")


def docker_remove_image(tag: str) -> Command:
    """Untag (and, with no tag left, delete) an image; refused while a container uses it."""
    return cmd("docker", "image", "rm", "--", tag)


def docker_rename(old: str, new: str) -> Command:
    return cmd("docker", "rename", old, new)


def docker_stop(name: str) -> Command:
    return cmd("docker", "stop", "--time", "10", name)


def docker_start(name: str) -> Command:
    return cmd("docker", "start", name)


def docker_remove_container(name: str) -> Command:
    return cmd("docker", "rm", "--force", name)


def docker_run(
    name: str,
    image: str,
    *,
    ports: Iterable[tuple[int | str, int]],
    env: Mapping[str, str],
    env_file: str | None,
    label_values: Mapping[str, str],
    restart: str = "unless-stopped",
    memory: str | None = None,
    no_new_privileges: bool = True,
    pids_limit: int | None = None,
    log_rotation: tuple[str, int] | None = None,
) -> Command:
    # --pull never: an image we did not build is an error here, never a registry request.
    args = ["docker", "run", "--detach", "--init", "--pull", "never", "--name", name,
            "--restart", restart]
    if memory:
        args += ["--memory", memory, "--memory-swap", memory]
    if no_new_privileges:
        args += ["--security-opt", "no-new-privileges"]
    if pids_limit is not None:
        args += ["--pids-limit", str(pids_limit)]
    if log_rotation is not None:
        size, files = log_rotation
        args += ["--log-driver", "json-file", "--log-opt", f"max-size={size}",
                 "--log-opt", f"max-file={files}"]
    # (8080, 80) publishes on every address; ("127.0.0.1:20005", 80) on loopback only
    for host_port, container_port in ports:
        args += ["--publish", f"{host_port}:{container_port}"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    if env_file:
        args += ["--env-file", env_file]
    args += _label_args(label_values)
    args.append(image)
    return Command(tuple(args))


def docker_publishers(port: int) -> Command:
    """Names of the running containers that publish `port` on the host."""
    return cmd("docker", "ps", "--filter", f"publish={port}", "--format", "{{.Names}}")


CONTAINER_STATE_FORMAT = (
    "status={{.State.Status}} exit_code={{.State.ExitCode}} oom_killed={{.State.OOMKilled}} "
    "restarts={{.RestartCount}} error={{.State.Error}}"
)


def docker_container_state(name: str) -> Command:
    return cmd("docker", "inspect", "--format", CONTAINER_STATE_FORMAT, name)


def docker_container_logs(name: str, tail: int = 50) -> Command:
    return cmd("docker", "logs", "--tail", tail, name)


def docker_port(name: str) -> Command:
    return cmd("docker", "port", name)


# Process control ----------------------------------------------------------------------------

PID_LINE_PREFIX = "__deploy_runs_pgid="


def with_pgid_report(command: Command) -> str:
    """The shell line that runs `command` after reporting its process group on stderr.

    An SSH session's command runs as a session leader, so `$$` is the process group of the
    command and of every process it starts: killing that group stops all of it on the server.
    """
    return f"echo {PID_LINE_PREFIX}$$ >&2; exec {command}"


def kill_process_group(pgid: int, signal: str = "KILL") -> Command:
    return cmd("kill", f"-{signal}", "--", f"-{int(pgid)}")
