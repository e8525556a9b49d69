"""Which Flower node holds which flatfl client: each node's ``partition-id`` (its ``node_config``,
``flower-supernode --node-config "partition-id=0 num-partitions=2"``; set for every node by the
simulation runtime), asked once per node with a ``query`` message to flatfl's ClientApp."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from flatfl.errors import UserError

QUERY_KEY = "flatfl"


def client_nodes(grid: Grid, known: dict[int, int], timeout: float = 600.0) -> dict[int, int]:
    """``{client id: node id}`` for every connected node; ``known`` (node id -> client id) is the
    cache of earlier calls and is updated. A node that does not answer the query (a ClientApp
    without flatfl's query handler) gets the client id of its rank among the sorted node ids."""
    nodes = sorted(grid.get_node_ids())
    new = [n for n in nodes if n not in known]
    if new:
        asks = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
        for reply in grid.send_and_receive(asks, timeout=timeout):
            rec = reply.content.config_records.get(QUERY_KEY) if not reply.has_error() else None
            if rec is not None and "partition-id" in rec:
                known[reply.metadata.src_node_id] = int(rec["partition-id"])
        for rank, n in enumerate(nodes):
            known.setdefault(n, rank)
    by_client: dict[int, int] = {}
    for n in nodes:
        c = known[n]
        if c in by_client:
            raise UserError(f"Flower nodes {by_client[c]} and {n} both hold partition-id {c}; give each its own")
        by_client[c] = n
    return by_client


def query_reply(message: Message, partition_id: int) -> Message:
    """The ClientApp's answer to :func:`client_nodes`' query."""
    return Message(RecordDict({QUERY_KEY: ConfigRecord({"partition-id": int(partition_id)})}), reply_to=message)
