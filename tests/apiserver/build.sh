#!/usr/bin/env bash
# Build the test Kubernetes API server (bpfproxy-test-apiserver) and fetch etcd.
#
# Output: ${BPFPROXY_CACHE:-/var/cache/bpfproxy}/apiserver-<hash>/bin/{bpfproxy-test-apiserver,etcd}
# where <hash> covers this script, packages.txt and the Go sources. The bin dir
# is printed as the LAST line of stdout; everything else goes to stderr.
#
# Nothing here touches the system's apt configuration: the Debian sid packages
# listed in packages.txt (Go 1.27, the Kubernetes staging libraries as Go
# sources, openapi-gen, etcd) are fetched with a private sources.list/state dir
# and unpacked with `dpkg -x` into a "sysroot" under the cache dir.
#
# Cache layout (all under $CACHE):
#   apiserver-<hash>/bin/...           final binaries (what callers use)
#   apiserver-sysroot-<pkghash>/       .debs (~91 MB) + unpacked root/ (~700 MB)
#   apiserver-gocache/                 GOCACHE, shared so source edits rebuild in ~10 s
#   apiserver-build.lock               serializes concurrent builds
#
# Environment knobs:
#   BPFPROXY_CACHE   cache root (default /var/cache/bpfproxy)
#   DEBIAN_MIRROR    Debian mirror URI to use for sid (default: the one this
#                    machine's apt already uses, from `apt-get indextargets`)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${BPFPROXY_CACHE:-/var/cache/bpfproxy}
GO_SOURCES=(main.go service.go strategies.go)

log() { echo "build.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- 0. Fast path: already built? ---------------------------------------------
hash=$(cd "$HERE" && sha256sum build.sh packages.txt "${GO_SOURCES[@]}" | sha256sum | cut -c1-16)
OUT=$CACHE/apiserver-$hash
if [[ -x $OUT/bin/bpfproxy-test-apiserver && -x $OUT/bin/etcd ]]; then
    touch "$OUT" 2>/dev/null || true   # "last used", see pruning below
    echo "$OUT/bin"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || log "warning: not root; apt-get download may still work if $CACHE is writable"
command -v apt-get >/dev/null || die "apt-get not found (this script expects Debian)"
command -v dpkg >/dev/null || die "dpkg not found"
mkdir -p "$CACHE" || die "cannot create $CACHE (set BPFPROXY_CACHE to a writable dir)"

# Several test binaries may call this at once: one builds, the others wait
# and then take the fast path.
exec 9>"$CACHE/apiserver-build.lock"
if ! flock -n 9; then
    log "another build.sh is running; waiting for it"
    flock 9
fi
if [[ -x $OUT/bin/bpfproxy-test-apiserver && -x $OUT/bin/etcd ]]; then
    echo "$OUT/bin"
    exit 0
fi

# --- 1. Fetch + unpack the sid packages (once per packages.txt) ---------------
pkghash=$(sha256sum "$HERE/packages.txt" | cut -c1-16)
SYS=$CACHE/apiserver-sysroot-$pkghash
ROOT=$SYS/root

fetch_packages() {
    local mirror=${DEBIAN_MIRROR:-}
    if [[ -z $mirror ]]; then
        # The machine's own Debian mirror (not -security), as apt sees it.
        mirror=$(apt-get indextargets --format '$(REPO_URI)' \
            'Origin: Debian' 'Label: Debian' 'Target-Of: deb' 2>/dev/null | sort -u | head -n1)
    fi
    [[ -n $mirror ]] || die "could not find a Debian mirror in the apt configuration; set DEBIAN_MIRROR"
    log "fetching sid packages from $mirror (private apt state in $SYS/apt)"

    rm -rf "$SYS"
    mkdir -p "$SYS/apt/lists/partial" "$SYS/apt/cache/archives/partial" "$SYS/debs" "$ROOT"
    # sid is signed with the current Debian archive keys; bookworm's
    # debian-archive-keyring carries them (bookworm/trixie/... keys).
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" \
        >"$SYS/apt/sources.list"
    local -a APT=(
        -o "Dir::Etc::SourceList=$SYS/apt/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$SYS/apt/lists"
        -o "Dir::Cache=$SYS/apt/cache"
        -o "Dir::State::status=/dev/null"
        -o "APT::Architecture=amd64"
        -o "Acquire::Languages=none"
        -o "Debug::NoLocking=1"
        -o "APT::Sandbox::User=root"
    )
    # Only the Packages index: skip Contents/dep11/translations.
    APT+=(-o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
          -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
          -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
          -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false")
    apt-get "${APT[@]}" -qq update >&2 || die "apt-get update for sid failed"

    # Resolve pins: sid drops old versions, so fall back to the current one.
    local -a want=()
    local line pkg ver avail
    while IFS= read -r line; do
        line=${line%%#*}; line=${line//[[:space:]]/}
        [[ -n $line ]] || continue
        pkg=${line%%=*}; ver=${line#*=}
        avail=$(apt-cache "${APT[@]}" madison "$pkg" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}')
        [[ -n $avail ]] || die "package $pkg is not in sid any more; update packages.txt"
        if grep -qxF -- "$ver" <<<"$avail"; then
            want+=("$pkg=$ver")
        else
            local cur; cur=$(head -n1 <<<"$avail")
            log "warning: $pkg=$ver is gone from sid, using $cur"
            want+=("$pkg=$cur")
        fi
    done <"$HERE/packages.txt"

    log "downloading ${#want[@]} packages"
    (cd "$SYS/debs" && apt-get "${APT[@]}" -qq download "${want[@]}" >&2) \
        || die "apt-get download failed"
    printf '%s\n' "${want[@]}" >"$SYS/resolved.txt"

    log "unpacking into $ROOT"
    local deb
    for deb in "$SYS"/debs/*.deb; do
        dpkg -x "$deb" "$ROOT"
    done
    rm -rf "$SYS/apt/cache" "$SYS/apt/lists"
    touch "$SYS/.complete"
}

if [[ ! -e $SYS/.complete ]]; then
    fetch_packages
else
    log "using unpacked packages in $SYS"
    touch "$SYS"
fi

# --- 2. Generate OpenAPI definitions and build (GOPATH mode, offline) --------
GOROOT=$ROOT/usr/lib/go-1.27
[[ -x $GOROOT/bin/go ]] || die "Go 1.27 not found in $GOROOT (is golang-1.27-go in packages.txt?)"
[[ -x $ROOT/usr/bin/openapi-gen ]] || die "openapi-gen not found (is kube-openapi in packages.txt?)"
[[ -x $ROOT/usr/bin/etcd ]] || die "etcd not found (is etcd-server in packages.txt?)"

WORK=$(mktemp -d "$CACHE/apiserver-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PKG=bpfproxy-test-apiserver
SRC=$WORK/gopath/src/$PKG
mkdir -p "$SRC/openapi"
(cd "$HERE" && cp "${GO_SOURCES[@]}" "$SRC/")

export GOROOT GOPATH="$WORK/gopath:$ROOT/usr/share/gocode"
export GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS= GOWORK=off
export GOCACHE=$CACHE/apiserver-gocache GOTMPDIR=$WORK
export PATH=$GOROOT/bin:$PATH
unset GOENV GOOS GOARCH || true

log "generating OpenAPI definitions (openapi-gen)"
# Every package whose types appear in the served objects' schemas. The
# k8s.io/api packages carry +k8s:openapi-model-package tags, so definitions
# are keyed by the canonical names (io.k8s.api.core.v1.Service, ...).
(cd "$SRC" && "$ROOT/usr/bin/openapi-gen" \
    --output-dir openapi --output-pkg "$PKG/openapi" --output-file zz_generated.openapi.go \
    --go-header-file /dev/null --report-filename /dev/null \
    k8s.io/api/core/v1 k8s.io/api/discovery/v1 \
    k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime \
    k8s.io/apimachinery/pkg/util/intstr k8s.io/apimachinery/pkg/api/resource \
    k8s.io/apimachinery/pkg/version >&2) || die "openapi-gen failed"

# /version reports this (the staging libs are v0.36.x = Kubernetes v1.36.x).
k8sver=$(sed -n 's/^golang-k8s-apiserver-dev=\(0\.\([0-9]*\)\.\([0-9]*\)\).*/1.\2.\3/p' "$SYS/resolved.txt")
[[ -n $k8sver ]] || k8sver=1.36.0
V=k8s.io/component-base/version
ldflags="-s -w -X $V.gitVersion=v$k8sver -X $V.gitMajor=1 -X $V.gitMinor=$(cut -d. -f2 <<<"$k8sver") -X $V.gitTreeState=clean -X $V.gitCommit=$hash"

log "compiling $PKG (Go $(go env GOVERSION); a cold build takes 3-6 min on 2 cores)"
start=$SECONDS
mkdir -p "$WORK/bin"
(cd "$SRC" && go build -trimpath -ldflags "$ldflags" -o "$WORK/bin/bpfproxy-test-apiserver" .) >&2 \
    || die "go build failed"
log "compiled in $((SECONDS - start)) s"
cp "$ROOT/usr/bin/etcd" "$WORK/bin/etcd"
[[ -x $ROOT/usr/bin/etcdctl ]] && cp "$ROOT/usr/bin/etcdctl" "$WORK/bin/etcdctl"

# Publish with one rename: readers (fast path, no lock) see all or nothing.
mkdir -p "$OUT"
rm -rf "$OUT/bin"
mv -T "$WORK/bin" "$OUT/bin"
printf '%s\n' "${GO_SOURCES[@]}" packages.txt build.sh >"$OUT/inputs.txt"
cp "$SYS/resolved.txt" "$OUT/packages.resolved.txt"
# Prune builds of other source versions unused for 3 days (~90 MB each).
find "$CACHE" -maxdepth 1 -name 'apiserver-????????????????' -type d -mtime +3 \
    ! -path "$OUT" -exec rm -rf {} + 2>/dev/null || true
# ... and unpacked package sets of other packages.txt versions (~800 MB each),
# and work dirs of interrupted builds.
find "$CACHE" -maxdepth 1 -name 'apiserver-sysroot-*' -type d -mtime +3 \
    ! -path "$SYS" -exec rm -rf {} + 2>/dev/null || true
find "$CACHE" -maxdepth 1 -name 'apiserver-build.*' -type d -mtime +1 -exec rm -rf {} + 2>/dev/null || true
log "done"
echo "$OUT/bin"
