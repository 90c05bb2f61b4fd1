#!/usr/bin/env bash
# The floor for a first deploy of `shop` (three services): the same work as deploy-runs' steps,
# done serially as one plain shell script over one ssh session (what a hand-written script
# does). Usage: floor_shop.sh SSH_TARGET SSH_PORT KEY KNOWN_HOSTS REPO_URL APP WEB API ADMIN
set -euo pipefail
target=$1 port=$2 key=$3 known_hosts=$4 repo=$5 app=$6 web=$7 api=$8 admin=$9
ssh -q -p "$port" -i "$key" -o BatchMode=yes -o UserKnownHostsFile="$known_hosts" \
    -o StrictHostKeyChecking=yes "$target" bash -s -- "$repo" "$app" "$web" "$api" "$admin" <<'REMOTE'
set -euo pipefail
repo=$1 app=$2
declare -A ports=([web]=$3 [api]=$4 [admin]=$5)
dir=floor/apps/$app
docker version --format '{{.Server.Version}}' >/dev/null
git --version >/dev/null
mkdir -p "$dir"
git clone -q --no-checkout "$repo" "$dir/repo"
git -C "$dir/repo" fetch -q --force --prune --tags origin '+refs/heads/*:refs/remotes/origin/*'
sha=$(git -C "$dir/repo" rev-parse --verify origin/main^{commit})
git -C "$dir/repo" checkout -q --force --detach "$sha"
for s in web api admin; do
  docker build -q --tag "floor/$app-$s:${sha:0:12}" --file "$dir/repo/$s/Dockerfile" \
      "$dir/repo/$s" >/dev/null
done
for s in web api admin; do
  docker rm --force "$app-$s" >/dev/null 2>&1 || true
  docker run --detach --init --name "$app-$s" --publish "${ports[$s]}:8080" \
      "floor/$app-$s:${sha:0:12}" >/dev/null
done
for s in web api; do
  until curl -fsS -o /dev/null "http://127.0.0.1:${ports[$s]}/"; do sleep 0.05; done
done
until (exec 3<>"/dev/tcp/127.0.0.1/${ports[admin]}") 2>/dev/null; do sleep 0.05; done
REMOTE
