#!/usr/bin/env bash
# The floor for a first deploy: the same work as deploy-runs' five steps, as one plain shell
# script over one ssh session. Usage: floor.sh SSH_TARGET SSH_PORT KEY KNOWN_HOSTS REPO_URL APP PORT
set -euo pipefail
target=$1 port=$2 key=$3 known_hosts=$4 repo=$5 app=$6 host_port=$7
ssh -q -p "$port" -i "$key" -o BatchMode=yes -o UserKnownHostsFile="$known_hosts" \
    -o StrictHostKeyChecking=yes "$target" bash -s -- "$repo" "$app" "$host_port" <<'REMOTE'
set -euo pipefail
repo=$1 app=$2 host_port=$3
dir=floor/apps/$app
docker version --format '{{.Server.Version}}' >/dev/null
git --version >/dev/null
mkdir -p "$dir"
git clone -q --no-checkout "$repo" "$dir/repo"
git -C "$dir/repo" fetch -q --force --prune --tags origin '+refs/heads/*:refs/remotes/origin/*'
sha=$(git -C "$dir/repo" rev-parse --verify origin/main^{commit})
git -C "$dir/repo" checkout -q --force --detach "$sha"
docker build -q --tag "floor/$app-web:${sha:0:12}" --file "$dir/repo/Dockerfile" "$dir/repo" >/dev/null
docker rm --force "$app-web" >/dev/null 2>&1 || true
docker run --detach --init --name "$app-web" --publish "$host_port:8080" "floor/$app-web:${sha:0:12}" >/dev/null
until curl -fsS -o /dev/null "http://127.0.0.1:$host_port/"; do sleep 0.05; done
REMOTE
