"""Scale-out: N stateless workers sharing what they must through Redis.

The server imports this package; the engine never does. Modules, one concern each:

    redis_client  the connection, key names under one prefix, errors -> `RedisUnavailable`
    registry      live workers and the sessions/calls each holds (heartbeats with a TTL)
    limits        concurrent sessions per key (expiring leases) and new sessions per key per minute
    hub           one shared pub/sub connection per worker, resubscribing after outages
    live          live events of a conversation: publisher + followers (in memory, or over Redis)
    rpc           requests to the worker that holds a call (hang-up, transfer), with a timeout
    keystore      ephemeral keys shared by every worker
    node          this worker's membership: the parts together, the heartbeat, admission
    config        cluster-mode checks at start

See docs/SCALING.md for the topology and docs/ARCHITECTURE.md for how the server uses it.
"""

from moksori.cluster.config import check_cluster_settings, cluster_enabled
from moksori.cluster.live import LiveEvents, MemoryLive, RedisLive
from moksori.cluster.node import Admitted, ClusterNode, Refusal
from moksori.cluster.redis_client import Keys, RedisUnavailable
from moksori.cluster.registry import Held, WorkerInfo
from moksori.cluster.rpc import RpcError

__all__ = [
    "Admitted", "ClusterNode", "Held", "Keys", "LiveEvents", "MemoryLive", "RedisLive", "RedisUnavailable",
    "Refusal", "RpcError", "WorkerInfo", "check_cluster_settings", "cluster_enabled",
]
