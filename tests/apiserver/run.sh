#!/usr/bin/env bash
# Start etcd + bpfproxy-test-apiserver for interactive use.
#
#   tests/apiserver/run.sh [extra apiserver flags...]
#
# Builds first if needed (build.sh), keeps everything in one temp dir
# (etcd data, certs, kubeconfig, logs), prints the kubeconfig path, and
# stops both processes and removes the temp dir on Ctrl-C / exit.
#
# Environment: ETCD_ARGS  extra etcd flags, e.g. "--auto-compaction-mode=revision --auto-compaction-retention=1"
#              KEEP_TMP=1 keep the temp dir on exit
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for tool in curl perl; do
    command -v $tool >/dev/null || { echo "run.sh needs $tool (apt-get install $tool)" >&2; exit 2; }
done
BIN=$("$HERE/build.sh" | tail -n1)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bpfproxy-apiserver.XXXXXX")
ETCD_PID= API_PID=
cleanup() {
    trap - EXIT INT TERM
    [[ -n $API_PID ]] && kill "$API_PID" 2>/dev/null && wait "$API_PID" 2>/dev/null || true
    [[ -n $ETCD_PID ]] && kill "$ETCD_PID" 2>/dev/null && wait "$ETCD_PID" 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port on 127.0.0.1 (perl-base is always there on Debian).
free_port() { perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen=>1,LocalAddr=>"127.0.0.1",LocalPort=>0)->sockport'; }

ETCD_CLIENT=$(free_port)
ETCD_PEER=$(free_port)
# shellcheck disable=SC2086 # ETCD_ARGS is a list of flags
"$BIN/etcd" --name default --data-dir "$TMP/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER" \
    --unsafe-no-fsync --log-level warn ${ETCD_ARGS:-} >"$TMP/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ETCD_CLIENT/health" >/dev/null 2>&1 && break
    kill -0 "$ETCD_PID" 2>/dev/null || { cat "$TMP/etcd.log" >&2; echo "etcd died" >&2; exit 1; }
    sleep 0.1
done

"$BIN/bpfproxy-test-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_CLIENT" \
    --bind-port 0 --cert-dir "$TMP/certs" --kubeconfig-out "$TMP/kubeconfig" "$@" \
    >"$TMP/apiserver.log" 2>&1 &
API_PID=$!
start=$EPOCHREALTIME
until [[ -s $TMP/kubeconfig ]] &&
    curl -sf --cacert "$TMP/certs/ca.crt" "$(sed -n 's/^ *server: //p' "$TMP/kubeconfig")/readyz" >/dev/null 2>&1; do
    kill -0 "$API_PID" 2>/dev/null || { cat "$TMP/apiserver.log" >&2; echo "apiserver died" >&2; exit 1; }
    sleep 0.05
done
SERVER=$(sed -n 's/^ *server: //p' "$TMP/kubeconfig")
awk -v a="$start" -v b="$EPOCHREALTIME" -v s="$SERVER" -v e="$ETCD_CLIENT" \
    'BEGIN { printf "apiserver ready in %.2f s: %s (etcd http://127.0.0.1:%s)\n", b - a, s, e }' >&2
echo "logs: $TMP/{apiserver,etcd}.log   CA: $TMP/certs/ca.crt" >&2
echo "try:  curl --cacert $TMP/certs/ca.crt $SERVER/api/v1/namespaces" >&2
echo "      KUBECONFIG=$TMP/kubeconfig kubectl get ns   (Ctrl-C stops both)" >&2
echo "$TMP/kubeconfig"
wait "$API_PID"
