"""A Flower ``Grid`` that delivers every message to a ClientApp in this process, one after another.

flwr 1.42's ``run_simulation`` runs ClientApps on its Ray backend only (``flwr[simulation]``,
``flatfl[flower-simulation]``; examples/flower_app/simulation.py). ``LocalGrid`` runs the same
objects -- a Strategy's messages, the ClientApp's handlers, each node's ``Context`` with
``partition-id``/``num-partitions`` as the simulation runtime sets them -- without Ray: for tests,
notebooks and exact, single-process equivalence with ``flatfl train``. A ClientApp's exception
becomes an error reply, as in Flower.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

FIRST_NODE_ID = 1001  # node ids are arbitrary integers in Flower; these make the mapping visible


class LocalGrid(Grid):
    """``num_nodes`` nodes running ``client_app``; node i holds partition i of ``num_nodes``."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: Mapping[str, Any]) -> None:
        self.client_app = client_app
        self.contexts = {
            FIRST_NODE_ID + i: Context(
                run_id=1,
                node_id=FIRST_NODE_ID + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self._run: Any = None
        _set_task_identity()

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        """The Flower ``Run`` this grid belongs to (Grid's interface)."""
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = mid = str(uuid.uuid4())
            try:
                reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - Flower turns a ClientApp's exception into an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _set_task_identity() -> None:
    """Who sends messages in this process (the ServerApp on the SuperLink's node), as Flower's
    runtime sets it before a ServerApp runs; left as it is when a runtime has set it."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    if TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
