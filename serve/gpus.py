"""GPU replicas, checked before deploying: a deployment asking for more GPUs than the cluster has
would wait for them forever (Serve keeps its replicas pending), so it is one line instead."""

from __future__ import annotations

from collections.abc import Mapping

from modresnet.errors import UserError
from serve.args import ServeArgs


class GpuError(UserError):
    """More GPUs asked for than the Ray cluster has."""


def check_gpus(args: ServeArgs, resources: Mapping[str, float]) -> None:
    """Refuse `args` when the cluster's GPUs (`ray.cluster_resources()`) cannot hold its
    min_replicas replicas of gpus_per_replica each."""
    if not args.gpus_per_replica:
        return
    need = args.min_replicas * args.gpus_per_replica
    have = float(resources.get("GPU", 0))
    if need > have + 1e-9:
        raise GpuError(
            f"--gpus-per-replica {args.gpus_per_replica:g} x --min-replicas "
            f"{args.min_replicas} needs {need:g} GPUs; this Ray cluster has {have:g}: lower "
            "them, or start Ray where there are GPUs (`ray start --num-gpus N`)"
        )
