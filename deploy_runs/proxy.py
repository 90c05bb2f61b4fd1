"""The reverse proxy in front of an application's HTTP services: one nginx container per
server (`deploy-runs-proxy`, host network), one configuration file per application.

Why nginx: its graceful reload starts new workers with the new configuration while the old
ones finish their requests, and it touches nothing else. Measured with the sandbox's binaries
(100 switches under three clients, a new connection per request): nginx 1.22's reload failed
0 of 4,031 requests; Caddy 2.6.2's admin API reset 13 of 5,431, because any change of its
configuration restarts every server of it, so one app's deploy would disturb all the apps on
the proxy.

A switch (`apply_script`) runs as one shell command under a per-server lock (`flock` on the
proxy's directory, let go when the command ends or its connection dies): it drops the
files of applications that have no container on the server any more, refuses a port another
application's file serves, puts the new file in place, reloads (SIGHUP; nginx checks the file
itself and keeps its old workers if it refuses it, saying why) and waits until every worker is
a new one; on any failure (or an [emerg] on nginx's log) the previous file is put back. It prints
the old workers' process ids: they finish their requests (`drain`) before the old container
stops.

Everything that reaches the shell is a validated name, a number or a constant; each is quoted
as well.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping

from deploy_runs.commands import LABEL_PREFIX, ROOT, Command, cmd

CONTAINER = "deploy-runs-proxy"
DEFAULT_IMAGE = "nginx:stable-alpine"
CONF_DIR = f"{ROOT}/proxy"  # relative to the SSH user's home, as every remote path
# Outside Linux's ephemeral range (32768-60999): a port there can be taken for a moment by an
# outgoing connection (or a probe connecting to itself) and then refused to `docker run`.
LOOPBACK_FIRST, LOOPBACK_COUNT = 20000, 10000
SWITCH_TIMEOUT = 10  # seconds the proxy has to take a new configuration
LOCK_WAIT = 120  # seconds a switch waits for another deploy's switch on the same server
OLD_WORKERS = "old-workers:"

_PORT_MAPPING = re.compile(r"(?P<addr>[0-9.]+|\[[0-9a-f:]*\]|::):(?P<host>\d+)->(?P<cont>\d+)/tcp")


# Where the proxy's files are: the directory the engine's proxy container reads (whoever
# started it: two deploy users of one server share it), or, before there is a proxy, a
# directory per Docker engine in the deploy user's home (servers that share a home, as the
# sandbox's hosts do, but each have an engine of their own, DOCKER_HOST set for their
# sessions, must not read each other's files).
_PROXY_DIR = (
    "dir=$(docker inspect --format '{{range .Mounts}}{{if eq .Destination "
    "\"/etc/nginx/conf.d\"}}{{.Source}}{{end}}{{end}}' __PROXY__ 2>/dev/null) || dir=''; "
    '[ -n "$dir" ] || dir="$PWD/__BASE__/engine-$(printf %s "${DOCKER_HOST:-}" | cksum | '
    'cut -d " " -f 1)"')


def _proxy_dir() -> str:
    return (_PROXY_DIR.replace("__BASE__", shlex.quote(CONF_DIR))
            .replace("__PROXY__", shlex.quote(CONTAINER)))


def read_conf(app: str) -> Command:
    """The app's file on this server's proxy (nothing when it has none)."""
    return cmd("sh", "-c", f'{_proxy_dir()}; cat -- "$dir/app-"{shlex.quote(app)}.conf '
                           "2>/dev/null; exit 0")


def loopback_port(app: str, service: str, salt: str, attempt: int = 0) -> int:
    """The loopback port a new container of `service` publishes on: spread by a hash of the
    app, service and `salt` (the run), so a new container's port differs from the old one's;
    `attempt` moves on when the port turns out to be taken."""
    digest = hashlib.sha256(f"{app}/{service}/{salt}".encode()).digest()
    return LOOPBACK_FIRST + (int.from_bytes(digest[:4], "big") + attempt * 7919) % LOOPBACK_COUNT


def published(ports: str) -> list[tuple[str, int, int]]:
    """`docker ps`'s Ports column as (address, host port, container port) triples."""
    return [(m["addr"], int(m["host"]), int(m["cont"])) for m in _PORT_MAPPING.finditer(ports)]


def loopback_of(ports: str, container_port: int) -> int | None:
    """The loopback port a proxied container publishes `container_port` on, if it does."""
    return next((host for addr, host, cont in published(ports)
                 if addr == "127.0.0.1" and cont == container_port), None)


def app_conf(app: str, routes: Mapping[int, int]) -> str:
    """The application's nginx file: a server on each public port, passing every request to
    the loopback port of the container that serves it now."""
    lines = [f"# deploy-runs: application {app}; written by each of its deploys, do not edit"]
    for public, loopback in sorted(routes.items()):
        lines += [
            "server {",
            f"    listen {int(public)};",
            "    location / {",
            f"        proxy_pass http://127.0.0.1:{int(loopback)};",
            "        proxy_http_version 1.1;",
            "        proxy_set_header Host $http_host;",
            "        proxy_set_header X-Real-IP $remote_addr;",
            "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "        proxy_set_header X-Forwarded-Proto $scheme;",
            "        proxy_set_header Connection \"\";",
            "        client_max_body_size 0;",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def parse_app_conf(text: str) -> dict[int, int]:
    """public port -> loopback port, from a file `app_conf` wrote."""
    listens = [int(p) for p in re.findall(r"^    listen (\d+);$", text, re.M)]
    targets = [int(p) for p in re.findall(r"proxy_pass http://127\.0\.0\.1:(\d+);$", text, re.M)]
    return dict(zip(listens, targets, strict=False))


def new_conf_file(app: str, salt: str) -> str:
    """Where a switch's new file is written first (outside the directory nginx reads), one
    per run (`salt`)."""
    return f"{CONF_DIR}/.app-{app}-{salt}.new"


_WORKERS = (f"docker top {CONTAINER} -o pid,args 2>/dev/null | awk '$2 == \"nginx:\" && "
            "$3 == \"worker\" && $4 == \"process\" && NF == 4 {print $1}'")

_SCRIPT = r"""set -u
__PROXY_DIR__; app=__APP__; image=__IMAGE__; proxy=__PROXY__; new=__NEW__
conf="$dir/app-$app.conf"; keep="$dir/.app-$app.conf.old"
mkdir -p "$dir"
exec 9<"$dir"  # the lock is on the directory: any deploy user who may write there may take it
if ! flock -w __LOCK_WAIT__ 9; then
  echo "the proxy's lock ($dir) stayed taken for __LOCK_WAIT__ s by another deploy" >&2
  rm -f -- "$new"; exit 75
fi
workers() { __WORKERS__; }
# files of applications that have no container on this server any more
if ! apps=$(docker ps --all --filter label=__LABEL__ --format '{{.Label "__LABEL__"}}'); then
  echo "the engine did not list its containers; the proxy is left as it is" >&2
  rm -f -- "$new"; exit 7
fi
for f in "$dir"/app-*.conf; do
  [ -e "$f" ] || continue
  a=${f##*/app-}; a=${a%.conf}
  [ "$a" = "$app" ] && continue
  if ! printf '%s\n' "$apps" | grep -qx -e "$a"; then
    rm -f -- "$f"; echo "removed $f: application $a has no container on this server"
  fi
done
for p in __PORTS__; do
  for f in "$dir"/app-*.conf; do
    [ -e "$f" ] && [ "$f" != "$conf" ] || continue
    if grep -qx "    listen $p;" "$f"; then
      echo "port $p is already served by the proxy for another application ($f)" >&2
      rm -f -- "$new"; exit 3
    fi
  done
done
if [ -e "$conf" ]; then
  cp -f "$conf" "$keep" || { rm -f -- "$new"; echo "cannot write in $dir" >&2; exit 4; }
else
  rm -f "$keep"
fi
restore() { if [ -e "$keep" ]; then mv -f "$keep" "$conf"; else rm -f "$conf"; fi; }
if ! mv -f "$new" "$conf"; then
  rm -f -- "$new" "$keep"; echo "cannot write $conf (the proxy's directory)" >&2; exit 4
fi
state=$(docker inspect --format '{{.State.Running}}' "$proxy" 2>/dev/null) || state=missing
old=""
if [ "$state" = missing ]; then
  if ! docker run --detach --name "$proxy" --network host --restart unless-stopped \
      --label __PROXY_LABEL__=1 --volume "$dir:/etc/nginx/conf.d:ro" "$image" >/dev/null; then
    restore; echo "the proxy container could not be started from $image" >&2; exit 6
  fi
  echo "started the proxy: container $proxy from $image"
elif [ "$state" != true ]; then
  docker start "$proxy" >/dev/null || { restore; exit 6; }
  echo "started the proxy again: container $proxy"
else
  old=$(workers)
  # SIGHUP is nginx's reload (as `nginx -s reload` sends it; no process started in the
  # container). nginx checks the configuration itself: if it refuses it, or cannot listen on
  # a port, it keeps its old workers and says why on its error log, read below.
  docker kill --signal HUP "$proxy" >/dev/null || { restore; exit 5; }
fi
since=$(date +%s)
i=0
while :; do
  cur=$(workers); fresh=yes
  [ -n "$cur" ] || fresh=no
  for p in $cur; do for q in $old; do [ "$p" = "$q" ] && fresh=no; done; done
  [ "$fresh" = yes ] && break
  i=$((i + 1))
  said=""
  [ $((i % 10)) -eq 0 ] && said=$(docker logs --since "$since" "$proxy" 2>&1 | grep -e '\[emerg\]')
  if [ -n "$said" ] || [ "$i" -ge __TRIES__ ]; then
    if [ -n "$said" ]; then
      echo "the proxy refused the new configuration; it said:" >&2
      printf '%s\n' "$said" | tail -n 5 | sed 's/^/  /' >&2
    else
      echo "the proxy did not take the new configuration within __SWITCH_TIMEOUT__ s; it" \
           "said:" >&2
      docker logs --tail 5 "$proxy" 2>&1 | sed 's/^/  /' >&2
    fi
    restore
    [ "$state" = true ] && docker kill --signal HUP "$proxy" >/dev/null
    exit 5
  fi
  sleep 0.02
done
rm -f "$keep"
printf '__OLD__'; for q in $old; do printf ' %s' "$q"; done; printf '\n'
"""


def apply_script(app: str, image: str, ports: list[int], new_file: str) -> Command:
    """The switch: `new_file` (written at `new_conf_file`) takes effect as the app's file (see
    the module's docstring). Exit codes: 3 port of another app, 4 the file could not be
    written, 5 refused or not taken by nginx, 6 the proxy could not start, 7 the engine did
    not list its containers, 75 lock not had."""
    values = {
        "__PROXY_DIR__": _proxy_dir(), "__NEW__": shlex.quote(new_file),
        "__APP__": shlex.quote(app),
        "__IMAGE__": shlex.quote(image), "__PROXY__": shlex.quote(CONTAINER),
        "__LOCK_WAIT__": str(int(LOCK_WAIT)), "__WORKERS__": _WORKERS,
        "__LABEL__": f"{LABEL_PREFIX}.app", "__PROXY_LABEL__": f"{LABEL_PREFIX}.proxy",
        "__PORTS__": " ".join(str(int(p)) for p in ports),
        "__TRIES__": str(SWITCH_TIMEOUT * 25), "__SWITCH_TIMEOUT__": str(SWITCH_TIMEOUT),
        "__OLD__": OLD_WORKERS,
    }
    script = _SCRIPT
    for key, value in values.items():
        script = script.replace(key, value)
    return cmd("sh", "-c", script)


def old_workers(stdout: str) -> set[int]:
    """The process ids `apply_script` printed: the workers that had the old configuration."""
    for line in stdout.splitlines():
        if line.startswith(OLD_WORKERS):
            return {int(p) for p in line[len(OLD_WORKERS):].split() if p.isdigit()}
    return set()


def proxy_processes() -> Command:
    """The proxy's processes as `PID ARGS` lines (read on the server: the image needs no ps)."""
    return cmd("docker", "top", CONTAINER, "-o", "pid,args")


def process_ids(stdout: str) -> set[int]:
    ids = set()
    for line in stdout.splitlines():
        first = line.split(None, 1)[0] if line.strip() else ""
        if first.isdigit():
            ids.add(int(first))
    return ids
