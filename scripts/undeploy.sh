#!/bin/sh
# make undeploy: remove what make deploy made, and nothing else.
#
#   1. the objects of the kustomization (KUSTOMIZATION, default manifests/): never the Namespace
#      (it is not part of it, see manifests/namespace) nor other objects living in it;
#   2. every generation of the generated agent ConfigMap (its name carries a content hash, so
#      each config change left an older one behind), found by label;
#   3. where the capacity overlay advertised it, the extended resource (CAPACITY_RESOURCE,
#      default example.com/SLO) from the status of each Node that still has it.
#
# KUBECTL, NAMESPACE (default observability) override the obvious.
set -eu
KUBECTL=${KUBECTL:-kubectl}
KUSTOMIZATION=${KUSTOMIZATION:-manifests/}
NAMESPACE=${NAMESPACE:-observability}
CAPACITY_RESOURCE=${CAPACITY_RESOURCE:-example.com/SLO}
say() { printf 'undeploy: %s\n' "$*"; }

say "deleting the objects of $KUSTOMIZATION"
"$KUBECTL" delete -k "$KUSTOMIZATION" --ignore-not-found
say "deleting every generation of the agent's ConfigMap in $NAMESPACE"
"$KUBECTL" delete configmap -n "$NAMESPACE" --ignore-not-found \
    -l app.kubernetes.io/part-of=ebpf-edge-agent,app.kubernetes.io/component=agent-config

# JSON Patch path of the resource: '~' -> '~0', '/' -> '~1'
path=$(printf '%s' "$CAPACITY_RESOURCE" | sed 's/~/~0/g; s|/|~1|g')
nodes=$("$KUBECTL" get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.capacity}{"\n"}{end}' \
        | grep -F "\"$CAPACITY_RESOURCE\"" | cut -d' ' -f1) || true
for node in $nodes; do
    say "removing $CAPACITY_RESOURCE from node $node"
    "$KUBECTL" patch node "$node" --subresource=status --type=json \
        -p "[{\"op\": \"remove\", \"path\": \"/status/capacity/$path\"}]"
done
[ -n "$nodes" ] || say "no node advertises $CAPACITY_RESOURCE"
say "done (namespace $NAMESPACE kept: kubectl delete -k manifests/namespace removes it)"
