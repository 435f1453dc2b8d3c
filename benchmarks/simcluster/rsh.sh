#!/bin/sh
# Hydra's "rsh" launcher for the simulated cluster: rsh.sh HOST COMMAND...
# runs COMMAND inside the network namespace that holds address HOST, as
# recorded by cluster.py in $RINGTRAIN_SIMCLUSTER_MAP ("address namespace" lines).
host=$1
shift
ns=$(awk -v h="$host" '$1 == h { print $2 }' "$RINGTRAIN_SIMCLUSTER_MAP")
[ -n "$ns" ] || { echo "rsh.sh: no namespace for host $host" >&2; exit 1; }
# Hydra quotes the proxy path itself, so the command goes through sh -c.
exec ip netns exec "$ns" sh -c "$*"
