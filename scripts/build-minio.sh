#!/usr/bin/env bash
# Build MinIO's server and `mc` from their Go modules, once per machine, and cache them.
#
# MinIO's community binaries are GitHub release assets only (dl.min.io answers 410 since
# 2026-09) and our build machines cannot reach GitHub; they do reach the Go module proxy, and
# minio's go.mod (go 1.24, no replace directives) builds with `go install`. The versions are
# the ones the minio role pins (ansible/roles/minio/defaults/main.yml): one fact, one place.
#
#   scripts/build-minio.sh          build what is missing; print the binaries' paths
#   scripts/build-minio.sh --print  print the paths without building (exit 1 if missing)
#
# Output, under $MLOPS_CACHE (default /var/cache/forest-cover-mlops):
#   minio/<version>/minio, minio/<version>/mc and a SHA256SUMS beside them; Go's module and
#   build caches in go/ so a rebuild after a cache wipe of the binaries takes seconds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${MLOPS_CACHE:-/var/cache/forest-cover-mlops}"
defaults="$repo/ansible/roles/minio/defaults/main.yml"

# The pinned pseudo-versions, read from the role's defaults.
pin() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$defaults"; }
server_version="$(pin minio_source_version)"
mc_version="$(pin minio_mc_source_version)"
server_sum="$(pin minio_source_sum)"
mc_sum="$(pin minio_mc_source_sum)"
[ -n "$server_version" ] && [ -n "$mc_version" ] && [ -n "$server_sum" ] && [ -n "$mc_sum" ] \
    || { echo "build-minio: versions or sums not found in $defaults" >&2; exit 1; }

out="$cache/minio/${server_version}_mc-${mc_version}"
if [ "${1:-}" = --print ]; then
    [ -x "$out/minio" ] && [ -x "$out/mc" ] || exit 1
    echo "$out/minio $out/mc"; exit 0
fi

# shellcheck source=scripts/lib/go.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"

build() { # module version sum name
    local module="$1" version="$2" sum="$3" name="$4" t got
    [ -x "$out/$name" ] && return 0
    find_go build-minio "$cache"
    t=$(date +%s)
    echo "==> building $name from $module@$version (once per machine; cached in $out)" >&2
    mkdir -p "$out.tmp"
    # The module itself is checked against the pinned go.sum hash, not the checksum database:
    # sum.golang.org as our proxy serves it has no entry for mc's pin (404 on 2026-12-01).
    # Its dependencies are still verified there as usual.
    got="$(GONOSUMDB="$module" go mod download -json "$module@$version" | sed -n 's/^\t"Sum": "\(.*\)",$/\1/p')"
    [ "$got" = "$sum" ] || { echo "build-minio: $module@$version has go.sum hash $got, pinned $sum" >&2; exit 1; }
    GOBIN="$out.tmp" GONOSUMDB="$module" CGO_ENABLED=0 \
        go install -trimpath -ldflags "-s -w" "$module@$version" >&2
    mv "$out.tmp/$name" "$out/$name"
    echo "    $name built in $(( $(date +%s) - t )) s, $(du -h "$out/$name" | cut -f1)" >&2
}
mkdir -p "$out"
build github.com/minio/minio "$server_version" "$server_sum" minio
build github.com/minio/mc "$mc_version" "$mc_sum" mc
rmdir "$out.tmp" 2>/dev/null || true
(cd "$out" && sha256sum minio mc >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
echo "$out/minio $out/mc"
