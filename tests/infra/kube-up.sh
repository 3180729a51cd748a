#!/usr/bin/env bash
# Starts a real Kubernetes control plane on 127.0.0.1 for the Kubernetes
# provider tests: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler (built by kube-build.sh, cached), a CA and certificates
# made with openssl, an admin kubeconfig, and one fake Node marked Ready
# through its /status subresource (there is no kubelet: pods are scheduled
# onto it but never run; tests drive their phases through /status).
# Needs root. Prints `export FLOTILLA_TEST_KUBECONFIG=...` for the caller to
# eval. Idempotent: a running control plane is restarted with fresh state.
set -euo pipefail
infra=${FLOTILLA_TEST_INFRA:-/tmp/flotilla-test-infra}
root=$infra/kube
here=$(cd "$(dirname "$0")" && pwd)
etcd_port=${FLOTILLA_TEST_ETCD_PORT:-23790}
api_port=${FLOTILLA_TEST_KUBE_PORT:-16443}
node=${FLOTILLA_TEST_KUBE_NODE:-flotilla-node-1}

bin=$("$here/kube-build.sh")
"$here/kube-down.sh" >/dev/null 2>&1 || true
mkdir -p "$root"/{pki,log,etcd}
chmod 700 "$root" "$root/pki"
pki=$root/pki

# A CA, the API server's serving certificate, an admin client certificate
# (group system:masters) and the service-account signing key pair.
if [ ! -f "$pki/admin.crt" ]; then
    (
        cd "$pki"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
            -subj "/CN=flotilla-test-ca" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
            -subj "/CN=kube-apiserver" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' > apiserver.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
            -subj "/O=system:masters/CN=flotilla-test-admin" 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' > admin.ext
        openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out admin.crt -days 3650 -extfile admin.ext 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
fi

kubeconfig=$root/admin.kubeconfig
cat > "$kubeconfig" <<CONF
apiVersion: v1
kind: Config
clusters:
- name: flotilla-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: flotilla-test-admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: flotilla-test
  context:
    cluster: flotilla-test
    user: flotilla-test-admin
current-context: flotilla-test
CONF
chmod 600 "$kubeconfig"
export KUBECONFIG=$kubeconfig

# wait_for WHAT SECONDS COMMAND...: runs COMMAND until it succeeds.
wait_for() {
    local what=$1 limit=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -gt "$deadline" ]; then
            echo "kube-up: $what did not happen within ${limit}s; logs in $root/log" >&2
            tail -n 20 "$root"/log/*.log >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}

start() {
    local name=$1
    shift
    "$@" > "$root/log/$name.log" 2>&1 &
    echo $! > "$root/$name.pid"
}

start etcd etcd --name flotilla-test --data-dir "$root/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 10))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 10))" \
    --initial-cluster "flotilla-test=http://127.0.0.1:$((etcd_port + 10))"
wait_for "etcd health" 60 sh -c "curl -sf http://127.0.0.1:$etcd_port/health | grep -q '\"health\":\"true\"'"

start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --insecure-port 0 \
    --endpoint-reconciler-type none \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode Node,RBAC \
    --allow-privileged=false
wait_for "kube-apiserver readiness" 120 kubectl get --raw /readyz

start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$kubeconfig" \
    --controllers '*,-nodeipam,-nodelifecycle' \
    --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" \
    --leader-elect=false --port 0 --secure-port 0
start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$kubeconfig" \
    --leader-elect=false --port 0 --secure-port 0

# The fake node: created, then Ready with capacity through /status. Its
# capacity is ample: with no kubelet to confirm their end, pods deleted
# gracefully stay (Terminating) and keep their requests for the run.
kubectl create -f - >/dev/null <<NODE
{"apiVersion": "v1", "kind": "Node",
 "metadata": {"name": "$node", "labels": {"kubernetes.io/hostname": "$node", "flotilla-test/pool": "workers"}}}
NODE
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
kubectl patch node "$node" --subresource=status --type=merge -p "$(cat <<STATUS
{"status": {
  "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "10000", "nvidia.com/gpu": "1000"},
  "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "10000", "nvidia.com/gpu": "1000"},
  "conditions": [{"type": "Ready", "status": "True", "reason": "FlotillaTestNode",
                  "message": "a node object with no kubelet", "lastHeartbeatTime": "$now",
                  "lastTransitionTime": "$now"}]}}
STATUS
)" >/dev/null
# The TaintNodesByCondition admission plugin tainted the node not-ready when
# it was created; the node lifecycle controller that would lift it is off.
kubectl taint node "$node" node.kubernetes.io/not-ready- >/dev/null 2>&1 || true

# The controller-manager is ready when it has made the default namespace's
# service account (and its token); the scheduler when it places a pod.
wait_for "the default service account" 120 kubectl get serviceaccount default -n default
wait_for "the default service account's token" 120 \
    sh -c "kubectl get serviceaccount default -n default -o jsonpath='{.secrets[0].name}' | grep -q ."
kubectl create -n default -f - >/dev/null <<POD
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "flotilla-probe"},
 "spec": {"containers": [{"name": "probe", "image": "probe", "imagePullPolicy": "Never"}]}}
POD
wait_for "the scheduler placing a pod" 120 \
    sh -c "kubectl get pod flotilla-probe -n default -o jsonpath='{.spec.nodeName}' | grep -q ."
kubectl delete pod flotilla-probe -n default --grace-period=0 --force >/dev/null 2>&1

echo "export FLOTILLA_TEST_KUBECONFIG=$kubeconfig"
echo "export FLOTILLA_TEST_KUBE_NODE=$node"
