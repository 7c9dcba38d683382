#!/usr/bin/env bash
# End-to-end smoke test of bpfproxy-test-apiserver with curl (+ python3 to
# read JSON). Builds if needed, starts etcd and servers in a temp dir, checks
# CRUD / list / watch / server-side apply / allocation / restart / 410 Expired,
# prints timings and RSS, stops everything it started and removes the temp dir.
# Exit status 0 = all checks passed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$("$HERE/build.sh" | tail -n1)
for tool in curl perl python3; do
    command -v $tool >/dev/null || { echo "smoke.sh needs $tool (apt-get install $tool)" >&2; exit 2; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bpfproxy-apiserver-smoke.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen=>1,LocalAddr=>"127.0.0.1",LocalPort=>0)->sockport'; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; exit 1; }
# expect DESC ACTUAL EXPECTED
expect() { if [[ $2 == "$3" ]]; then pass "$1 ($2)"; else fail "$1: got '$2', want '$3'"; fi; }
# j EXPR: evaluate a Python expression over the JSON on stdin (bound to d)
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); r=eval(sys.argv[1]); print(r if not isinstance(r,(dict,list)) else json.dumps(r))' "$1"; }
rss_mb() { awk '/^VmRSS/ { printf "%.0f", $2/1024 }' "/proc/$1/status"; }

# --- etcd -------------------------------------------------------------------
ETCD_PORT=$(free_port) PEER_PORT=$(free_port)
ETCD=http://127.0.0.1:$ETCD_PORT
"$BIN/etcd" --name default --data-dir "$TMP/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$PEER_PORT" --unsafe-no-fsync --log-level warn >"$TMP/etcd.log" 2>&1 &
ETCD_PID=$!
PIDS+=("$ETCD_PID")
t=$(now)
until curl -sf "$ETCD/health" >/dev/null 2>&1; do kill -0 "$ETCD_PID" || fail "etcd died: $(cat "$TMP/etcd.log")"; sleep 0.05; done
pass "etcd $("$BIN/etcd" --version | head -1 | awk '{print $3}') ready in $(elapsed "$t") s"

# --- apiserver helpers ------------------------------------------------------
# start_api NAME [flags...]: sets API, CA, API_PID; prints ready time.
start_api() {
    local name=$1; shift
    local dir=$TMP/$name
    mkdir -p "$dir"
    t=$(now)
    "$BIN/bpfproxy-test-apiserver" --etcd-servers "$ETCD" --bind-port 0 --cert-dir "$dir/certs" \
        --kubeconfig-out "$dir/kubeconfig" "$@" >"$dir/log" 2>&1 &
    API_PID=$!
    PIDS+=("$API_PID")
    CA=$dir/certs/ca.crt
    until [[ -s $dir/kubeconfig ]] && API=$(sed -n 's/^ *server: //p' "$dir/kubeconfig") &&
        curl -sf --cacert "$CA" "$API/readyz" >/dev/null 2>&1; do
        kill -0 "$API_PID" 2>/dev/null || fail "apiserver $name died: $(tail -20 "$dir/log")"
        sleep 0.02
    done
    pass "apiserver '$name' ready in $(elapsed "$t") s at $API (flags: $*)"
}
c() { curl -sS --cacert "$CA" "$@"; }
post() { c -X POST -H 'Content-Type: application/json' "$API$1" -d "$2"; }
apply() { c -X PATCH -H 'Content-Type: application/apply-patch+yaml' "$API$1" --data-binary "$2"; }

# --- 1. basics ----------------------------------------------------------------
start_api main
expect "/version" "$(c "$API/version" | j 'd["gitVersion"]')" "v1.36.4"
expect "bootstrap namespaces" "$(c "$API/api/v1/namespaces" | j 'sorted(i["metadata"]["name"] for i in d["items"])')" \
    '["default", "kube-node-lease", "kube-public", "kube-system"]'
expect "create namespace" "$(post /api/v1/namespaces '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"t1"}}' | j 'd["status"]["phase"]')" "Active"

# --- 2. watch (started before the writes) -------------------------------------
curl -sS -N --cacert "$CA" "$API/api/v1/namespaces/t1/services?watch=1" >"$TMP/watch-svc" 2>/dev/null &
W1=$!; PIDS+=("$W1")
curl -sS -N --cacert "$CA" "$API/apis/discovery.k8s.io/v1/namespaces/t1/endpointslices?watch=1&allowWatchBookmarks=true" >"$TMP/watch-slice" 2>/dev/null &
W2=$!; PIDS+=("$W2")
sleep 0.3

# --- 3. services: defaults + allocation ----------------------------------------
svc=$(post /api/v1/namespaces/t1/services '{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":8080}]}}')
expect "ClusterIP allocated" "$(j 'd["spec"]["clusterIP"], d["spec"]["clusterIPs"]' <<<"$svc")" "('10.96.0.2', ['10.96.0.2'])"
expect "service defaults" "$(j '[d["spec"][k] for k in ("type","sessionAffinity","ipFamilies","ipFamilyPolicy","internalTrafficPolicy")] + [d["spec"]["ports"][0]["protocol"]]' <<<"$svc")" \
    '["ClusterIP", "None", ["IPv4"], "SingleStack", "Cluster", "TCP"]'
svc=$(post /api/v1/namespaces/t1/services '{"apiVersion":"v1","kind":"Service","metadata":{"name":"np"},"spec":{"type":"NodePort","ports":[{"name":"a","port":80},{"name":"b","port":53,"protocol":"UDP"}]}}')
expect "NodePort allocated" "$(j '[p["nodePort"] for p in d["spec"]["ports"]], d["spec"]["ports"][0]["targetPort"], d["spec"]["externalTrafficPolicy"]' <<<"$svc")" "([30000, 30001], 80, 'Cluster')"
expect "explicit ClusterIP conflict -> 422" "$(post /api/v1/namespaces/t1/services '{"apiVersion":"v1","kind":"Service","metadata":{"name":"dup"},"spec":{"clusterIP":"10.96.0.2","ports":[{"port":80}]}}' | j 'd["code"]')" "422"
expect "headless" "$(post /api/v1/namespaces/t1/services '{"apiVersion":"v1","kind":"Service","metadata":{"name":"hl"},"spec":{"clusterIP":"None","ports":[{"port":80}]}}' | j 'd["spec"]["clusterIPs"]')" '["None"]'

# --- 4. EndpointSlice ------------------------------------------------------------
slice=$(post /apis/discovery.k8s.io/v1/namespaces/t1/endpointslices '{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"web-1","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","endpoints":[{"addresses":["10.1.0.5"],"conditions":{"ready":true}}],"ports":[{"port":8080}]}')
expect "EndpointSlice created + defaulted" "$(j 'd["metadata"]["generation"], d["ports"]' <<<"$slice")" "(1, [{'name': '', 'protocol': 'TCP', 'port': 8080}])"
expect "list by label selector" "$(c "$API/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb" | j '[i["metadata"]["name"] for i in d["items"]]')" '["web-1"]'
expect "update bumps generation" "$(c -X PATCH -H 'Content-Type: application/merge-patch+json' "$API/apis/discovery.k8s.io/v1/namespaces/t1/endpointslices/web-1" -d '{"endpoints":[{"addresses":["10.1.0.6"]}]}' | j 'd["metadata"]["generation"]')" "2"

# --- 5. server-side apply -----------------------------------------------------
ssa='apiVersion: v1
kind: Service
metadata: {name: ssa}
spec:
  type: NodePort
  selector: {app: ssa}
  ports: [{name: http, port: 80, targetPort: 8080}]'
out=$(apply "/api/v1/namespaces/t1/services/ssa?fieldManager=test" "$ssa")
expect "SSA create" "$(j 'd["spec"]["clusterIP"] != "", d["spec"]["ports"][0]["nodePort"] > 0, [(m["manager"], m["operation"]) for m in d["metadata"]["managedFields"]]' <<<"$out")" "(True, True, [('test', 'Apply')])"
ip=$(j 'd["spec"]["clusterIP"]' <<<"$out")
out=$(apply "/api/v1/namespaces/t1/services/ssa?fieldManager=test" "${ssa%]}, {name: https, port: 443}]")
expect "SSA re-apply keeps clusterIP, adds port" "$(j 'd["spec"]["clusterIP"], len(d["spec"]["ports"])' <<<"$out")" "('$ip', 2)"
expect "SSA conflict -> 409" "$(apply "/api/v1/namespaces/t1/services/ssa?fieldManager=other" 'apiVersion: v1
kind: Service
metadata: {name: ssa}
spec: {selector: {app: other}}' | j 'd["code"]')" "409"

# --- 6. delete ----------------------------------------------------------------
expect "delete service" "$(c -X DELETE "$API/api/v1/namespaces/t1/services/np" | j 'd["metadata"]["name"]')" "np"
expect "get after delete -> 404" "$(c "$API/api/v1/namespaces/t1/services/np" | j 'd["code"]')" "404"
expect "delete EndpointSlice" "$(c -X DELETE "$API/apis/discovery.k8s.io/v1/namespaces/t1/endpointslices/web-1" | j 'd["status"]')" "Success"
sleep 0.3
kill "$W1" "$W2"
wait "$W1" "$W2" 2>/dev/null || true
expect "service watch events" "$(python3 -c 'import json,sys; print([(e["type"], e["object"]["metadata"]["name"]) for e in map(json.loads, open(sys.argv[1]))])' "$TMP/watch-svc")" \
    "[('ADDED', 'web'), ('ADDED', 'np'), ('ADDED', 'hl'), ('ADDED', 'ssa'), ('MODIFIED', 'ssa'), ('DELETED', 'np')]"
expect "EndpointSlice watch events" "$(python3 -c 'import json,sys; print([(e["type"], e["object"]["metadata"]["name"]) for e in map(json.loads, open(sys.argv[1])) if e["type"] != "BOOKMARK"])' "$TMP/watch-slice")" \
    "[('ADDED', 'web-1'), ('MODIFIED', 'web-1'), ('DELETED', 'web-1')]"
expect "streaming list (sendInitialEvents)" "$(timeout 3 curl -sS -N --cacert "$CA" "$API/api/v1/namespaces/t1/services?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true" 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    e=json.loads(l)
    if e["type"]=="BOOKMARK": print(e["object"]["metadata"].get("annotations")); break
    print(e["type"], e["object"]["metadata"]["name"])' | tr '\n' ' ')" \
    "ADDED hl ADDED ssa ADDED web {'k8s.io/initial-events-end': 'true'} "
echo "     RSS: apiserver $(rss_mb "$API_PID") MB, etcd $(rss_mb "$ETCD_PID") MB"

# --- 7. restart on the same etcd: the allocator is seeded from storage ----------
curl -sS -N --cacert "$CA" "$API/api/v1/services?watch=1" >/dev/null 2>&1 &
W3=$!; PIDS+=("$W3")
sleep 0.2
t=$(now); kill "$API_PID"; wait "$API_PID" 2>/dev/null || true
d=$(elapsed "$t")
awk -v d="$d" 'BEGIN { exit !(d < 5) }' || fail "SIGTERM with an open watch took $d s"
pass "apiserver stopped (SIGTERM, one watch open) in $d s"
wait "$W3" 2>/dev/null || true
start_api main2
ips=$(c "$API/api/v1/services" | j 'sorted(i["spec"].get("clusterIP","") for i in d["items"])')
new=$(post /api/v1/namespaces/t1/services '{"apiVersion":"v1","kind":"Service","metadata":{"name":"after"},"spec":{"ports":[{"port":80}]}}' | j 'd["spec"]["clusterIP"]')
expect "no ClusterIP reuse after restart ($new not in $ips)" "$(python3 -c 'import sys,json; print(sys.argv[1] not in json.loads(sys.argv[2]))' "$new" "$ips")" "True"
expect "existing nodePort still reserved" "$(post /api/v1/namespaces/t1/services '{"apiVersion":"v1","kind":"Service","metadata":{"name":"np3"},"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":'"$(c "$API/api/v1/namespaces/t1/services/ssa" | j 'd["spec"]["ports"][0]["nodePort"]')"'}]}}' | j 'd["code"]')" "422"

# --- 8. 410 Expired: no watch cache + fast compaction, own etcd prefix --------
start_api expiry --etcd-prefix=/expiry --watch-cache=false --etcd-compaction-interval=1s
rv=$(post /api/v1/namespaces '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x1"}}' | j 'd["metadata"]["resourceVersion"]')
for i in 2 3 4; do post /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"x$i\"}}" >/dev/null; done
sleep 2.5
expect "other prefix sees only its objects" "$(c "$API/api/v1/namespaces" | j 'len([i for i in d["items"] if i["metadata"]["name"]=="t1"])')" "0"
expect "watch from compacted RV -> 410 Expired" "$(timeout 3 curl -sS -N --cacert "$CA" "$API/api/v1/namespaces?watch=1&resourceVersion=$rv" 2>/dev/null | head -1 | j 'd["type"], d["object"]["code"], d["object"]["reason"]')" \
    "('ERROR', 410, 'Expired')"
expect "list at compacted RV -> 410" "$(c "$API/api/v1/namespaces?resourceVersion=$rv&resourceVersionMatch=Exact" | j 'd["code"]')" "410"

echo "all checks passed"
