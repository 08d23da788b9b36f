# Sourced by the scripts that build Go modules (build-minio.sh, build-terraform-providers.sh).
# find_go WHO CACHE: a Go that can build go 1.24 modules on PATH (the machine's, else
# Debian's golang-go), with Go's module and build caches under CACHE/go. A go >= 1.21 fetches
# the toolchain a go.mod asks for from the module proxy itself (GOTOOLCHAIN=auto).
find_go() {
    local who="$1" cache="$2" minor
    PATH="$PATH:/usr/local/go/bin"
    if ! command -v go >/dev/null; then
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
            || { echo "$who: needs Go >= 1.21 (Debian: apt-get install golang-go)" >&2; exit 1; }
        echo "==> installing Debian's golang-go" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go >&2; }
    fi
    minor="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
    [ "${minor:-0}" -ge 21 ] || { echo "$who: $(go env GOVERSION) is too old; needs Go >= 1.21" >&2; exit 1; }
    export GOTOOLCHAIN=auto GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS=-modcacherw
}
