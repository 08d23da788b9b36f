#!/usr/bin/env bash
# Build the Terraform providers terraform/ needs from their Go modules, once per machine, and
# serve them from a filesystem mirror: the Terraform registry cannot be reached from our build
# machines, the Go module proxy can.
#
#   scripts/build-terraform-providers.sh          build what is missing; print the CLI config path
#   scripts/build-terraform-providers.sh --print  print it without building (exit 1 if missing)
#
# Then:  TF_CLI_CONFIG_FILE=<printed path> terraform init   (writes .terraform.lock.hcl with
# this build's hashes; a lock file with the registry's hashes would not match a local build).
#
# Output, under $MLOPS_CACHE (default /var/cache/forest-cover-mlops):
#   terraform-providers/registry.terraform.io/<namespace>/<name>/<version>/linux_amd64/
#       terraform-provider-<name>_v<version>            (the mirror's "unpacked" layout)
#   terraform-providers/cli.tfrc                        provider_installation from that mirror only
#   go/mod, go/build                                    Go's caches (shared with build-minio.sh)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${MLOPS_CACHE:-/var/cache/forest-cover-mlops}"
mirror="$cache/terraform-providers"
cli_config="$mirror/cli.tfrc"
platform=linux_amd64

# address  version  Go module  module version
# - dmacvicar/libvirt: its go.mod has replace directives, so `go install mod@v` refuses it:
#   download the module, build inside a copy of its folder (replaces then apply).
# - hashicorp/local: its go.mod names github.com/terraform-providers/terraform-provider-local
#   without a /v2 suffix, so its v2 tags are not Go versions; the proxy serves v2.9.0's commit
#   (3561e410f9fe, tag v2.9.0) as the pseudo-version below. 2.5.3 (47a22a41fe30) is refused by
#   our proxy (403 "This module version is not available", 2026-12-01), so terraform/ pins 2.9.0.
providers=(
    "dmacvicar/libvirt 0.8.3 github.com/dmacvicar/terraform-provider-libvirt v0.8.3"
    "hashicorp/local 2.9.0 github.com/terraform-providers/terraform-provider-local v1.4.1-0.20260513075820-3561e410f9fe"
)

binary_path() { # address version
    local name="${1#*/}"
    echo "$mirror/registry.terraform.io/$1/$2/$platform/terraform-provider-${name}_v$2"
}

# The pins here and in terraform/versions.tf must agree, or `terraform init` finds nothing.
for p in "${providers[@]}"; do
    read -r address version _ _ <<<"$p"
    grep -A2 "source *= *\"$address\"" "$repo/terraform/versions.tf" | grep -q "version *= *\"$version\"" \
        || { echo "build-terraform-providers: terraform/versions.tf does not pin $address $version" >&2; exit 1; }
done

write_cli_config() {
    local includes=() p address
    for p in "${providers[@]}"; do
        read -r address _ _ _ <<<"$p"
        includes+=("\"registry.terraform.io/$address\"")
    done
    cat >"$cli_config.tmp" <<EOF
# Written by scripts/build-terraform-providers.sh: providers come only from the local build.
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = [$(IFS=,; echo "${includes[*]}" | sed 's/,/, /g')]
  }
}
EOF
    mv "$cli_config.tmp" "$cli_config"
}

if [ "${1:-}" = --print ]; then
    for p in "${providers[@]}"; do
        read -r address version _ _ <<<"$p"
        [ -x "$(binary_path "$address" "$version")" ] || exit 1
    done
    [ -f "$cli_config" ] || exit 1
    echo "$cli_config"; exit 0
fi

# shellcheck source=scripts/lib/go.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"

build() { # address version module module_version
    local address="$1" version="$2" module="$3" module_version="$4" out dir work t
    out="$(binary_path "$address" "$version")"
    [ -x "$out" ] && return 0
    find_go build-terraform-providers "$cache"
    t=$(date +%s)
    echo "==> building $address $version from $module@$module_version (once per machine)" >&2
    dir="$(go mod download -json "$module@$module_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [ -n "$dir" ] && [ -f "$dir/go.mod" ] || { echo "build-terraform-providers: go mod download $module@$module_version failed" >&2; exit 1; }
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    cp -r "$dir/." "$work/src"
    chmod -R u+w "$work/src"
    mkdir -p "$(dirname "$out")"
    (cd "$work/src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$out.tmp" .) >&2
    mv "$out.tmp" "$out"
    echo "    built in $(( $(date +%s) - t )) s, $(du -h "$out" | cut -f1)" >&2
}

mkdir -p "$mirror"
for p in "${providers[@]}"; do
    # shellcheck disable=SC2086
    build $p
done
write_cli_config
echo "$cli_config"
