#!/usr/bin/env bash
# Builds the agent's container image (packaging/Dockerfile) with buildah,
# chroot isolation: no daemon, and no registry where none is reachable.
#
#   bash scripts/image.sh [TAG]        # default TAG: localhost/probe-agent:dev
#
# The agent is built on the host (cargo build --release; see the Dockerfile
# for why) and copied into an empty image with the C libraries it links.
# Those libraries come from the base image (build argument BASE):
#   - PROBE_IMAGE_BASE, when set;
#   - else Debian bookworm-slim from Docker Hub, when the registry answers;
#   - else a Debian bookworm made here with debootstrap (from the Debian
#     archive, about a minute) and imported as localhost/probe-debian:bookworm,
#     kept in the machine's container storage: built once per machine
#     (PROBE_IMAGE_REFRESH=1 makes it again).
# PROBE_AGENT_BIN ships that binary instead of building one.
# Prints the image's name and size last. Root only (buildah, debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
tag=${1:-localhost/probe-agent:dev}
log() { echo "image: $*" >&2; }
started=$(date +%s)

for tool in buildah podman; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/setup.sh"; exit 1; }
done

# --- the base ---------------------------------------------------------------
local_base=localhost/probe-debian:bookworm
base_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# Debian bookworm from the Debian archive, imported as $local_base. Under a
# lock, so that two builds at once make it once.
make_local_base() {
  exec 9>/var/tmp/probe-image-base.lock
  flock 9
  if base_exists "$local_base" && [ -z "${PROBE_IMAGE_REFRESH:-}" ]; then return; fi
  command -v debootstrap >/dev/null || { log "debootstrap is missing: run scripts/setup.sh"; exit 1; }
  local dir
  dir=$(mktemp -d /var/tmp/probe-debootstrap.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$dir'" EXIT
  log "no registry: making $local_base with debootstrap (about a minute, once per machine)"
  debootstrap --variant=minbase bookworm "$dir/rootfs" "${PROBE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
    >"$dir/debootstrap.log" 2>&1 || { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
  tar -C "$dir/rootfs" -c . | podman import --quiet \
    --message "debootstrap --variant=minbase bookworm, by probe's scripts/image.sh" - "$local_base" >/dev/null
  rm -rf "$dir"
  trap - EXIT
  flock -u 9
}

if [ -n "${PROBE_IMAGE_BASE:-}" ]; then
  base=$PROBE_IMAGE_BASE
elif code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null) \
    && [ "$code" != 000 ]; then
  # The registry answered (401 asks for a token: it is there).
  base=docker.io/library/debian:bookworm-slim
else
  make_local_base
  base=$local_base
fi
log "base $base"

# --- the agent --------------------------------------------------------------
ctx=$(mktemp -d /var/tmp/probe-image-ctx.XXXXXX)
# shellcheck disable=SC2064
trap "rm -rf '$ctx'" EXIT
if [ -n "${PROBE_AGENT_BIN:-}" ]; then
  install -m 0755 "$PROBE_AGENT_BIN" "$ctx/probe-agent"
else
  cargo build --release --locked --quiet -p probe-agent
  install -m 0755 target/release/probe-agent "$ctx/probe-agent"
fi
version=$("$ctx/probe-agent" --version | awk '{print $2}')

# --- the image --------------------------------------------------------------
old=$(buildah inspect --type image --format '{{.FromImageID}}' "$tag" 2>/dev/null || true)
buildah bud --quiet --isolation chroot --pull=missing \
  --build-arg "BASE=$base" \
  --label "org.opencontainers.image.title=probe-agent" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.base.name=$base" \
  -f packaging/Dockerfile -t "$tag" "$ctx" >/dev/null
new=$(buildah inspect --type image --format '{{.FromImageID}}' "$tag")
# The previous build under this tag, now untagged, goes (only that one).
if [ -n "$old" ] && [ "$old" != "$new" ]; then buildah rmi "$old" >/dev/null 2>&1 || true; fi
size=$(podman image inspect --format '{{.Size}}' "$tag")
log "built $tag (agent $version, $((size / 1024)) KiB) in $(($(date +%s) - started)) s"
echo "$tag"
