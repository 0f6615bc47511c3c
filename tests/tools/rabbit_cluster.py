"""A RabbitMQ cluster of our own: three private nodes on this machine, joined.

Each node is a `PrivateRabbit` (own node name `rf-<run>-a@localhost`, AMQP and distribution
ports, Mnesia and log directories in a temporary directory); they share one Erlang cookie (a
`HOME` of their own holding `.erlang.cookie`, which the nodes and `rabbitmqctl` both read), and
the second and third join the first with `rabbitmqctl join_cluster`. The machine's shared node
(rabbit@<host>, port 5672) is never addressed. Everything is stopped and removed on exit, also
when starting failed half-way.

    async with RabbitCluster() as rabbits:
        rabbits.url                      # every node's AMQP URL, comma-separated
        await rabbits.kill(1); await rabbits.restart(1)
        rabbits.pause(2); rabbits.resume(2)
        await rabbits.quorum_members("ns.orchestrator")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path

from tests.support import wait_for
from tests.tools.lifecycle import Lifecycle
from tests.tools.private_services import PrivateRabbit

# Three nodes is the smallest cluster a quorum queue survives the loss of one in.
SIZE = 3
# A hung node's peers notice it after net_ticktime (10 s here, RabbitMQ's default 60 s) and only
# then elect new leaders for the quorum queues it led (measured at 60 s: a minute and more
# before a workflow moved again). A node hung longer than that, which noticed nothing while
# stopped, comes back into a partition: autoheal restarts the side with fewer clients (by
# then, the hung one), where pause_minority would leave it partitioned for good (seen).
CLUSTER_CONFIG = "cluster_partition_handling = autoheal\nnet_ticktime = 10\n"


class RabbitCluster(Lifecycle):
    def __init__(self, size: int = SIZE) -> None:
        run = uuid.uuid4().hex[:6]
        self._home = Path(tempfile.mkdtemp(prefix="relayflow-rabbit-cluster-"))
        self.nodes = [
            PrivateRabbit(
                name=f"rf-{run}-{chr(ord('a') + i)}", home=self._home, config=CLUSTER_CONFIG
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """`AMQP_URL` for a client of the whole cluster, as guest."""
        return ",".join(node.url for node in self.nodes)

    async def start(self) -> None:
        cookie = self._home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        try:
            await asyncio.gather(*(node.start() for node in self.nodes))
            first = self.nodes[0]
            for node in self.nodes[1:]:
                await node.ctl("stop_app")
                await node.ctl("join_cluster", first.node)
                await node.ctl("start_app")
                await node.wait_ready()
            await self.wait_formed()
        except BaseException:
            await self.stop()
            raise

    async def running_nodes(self, via: int = 0) -> set[str]:
        """The nodes `via` sees running (its `cluster_status`)."""
        status = json.loads(await self.nodes[via].ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    async def wait_formed(self, timeout: float = 90) -> None:
        """Until every running node sees every node running: a quorum queue declared before
        that would get fewer members than the cluster has nodes."""
        everyone = {node.node for node in self.nodes}

        async def formed() -> bool:
            for i in range(len(self.nodes)):
                try:
                    if await self.running_nodes(i) != everyone:
                        return False
                except Exception:
                    return False
            return True

        await wait_for(formed, timeout=timeout, interval=0.5, what="every node sees all running")

    async def partitions(self) -> dict[str, list[str]]:
        """Per running node, the nodes it was partitioned from (empty when whole)."""
        found: dict[str, list[str]] = {}
        for node in self.nodes:
            if node.answering:
                status = json.loads(await node.ctl("cluster_status", "--formatter", "json"))
                found.update({k: v for k, v in (status.get("partitions") or {}).items() if v})
        return found

    async def heal(self) -> None:
        """Every node running, answering and in one cluster again, whatever a test left: paused
        nodes resumed, killed ones started (together: a node that was not the last one down
        waits for its peers before it serves), and a node that came back into a partition
        (hung longer than net_ticktime) restarted, which makes it rejoin."""
        for index, node in enumerate(self.nodes):
            if node.paused:
                self.resume(index)
        await asyncio.gather(*(node.launch() for node in self.nodes if not node.running))
        try:
            await self.wait_formed(timeout=60)
        except AssertionError:
            everyone = {node.node for node in self.nodes}
            for index, node in enumerate(self.nodes):
                with contextlib.suppress(Exception):
                    if await self.running_nodes(index) != everyone:
                        await node.restart()
            await self.wait_formed()
        if await self.partitions():
            raise AssertionError(f"the cluster stays partitioned: {await self.partitions()}")

    async def kill(self, index: int) -> None:
        await self.nodes[index].kill()

    async def restart(self, index: int) -> None:
        """Start a killed node again; it rejoins the cluster it remembers."""
        await self.nodes[index].launch()
        await self.wait_formed()

    def pause(self, index: int) -> None:
        self.nodes[index].pause()

    def resume(self, index: int) -> None:
        self.nodes[index].resume()

    async def quorum_members(self, queue: str, via: int | None = None) -> tuple[set[str], set[str]]:
        """A quorum queue's members and those of them online, as a running node sees them."""
        index = via if via is not None else next(i for i, n in enumerate(self.nodes) if n.running)
        text = await self.nodes[index].ctl(
            "list_queues", "name", "members", "online", "--formatter", "json", timeout=30
        )
        for row in json.loads(text):
            if row["name"] == queue:
                return set(row.get("members") or []), set(row.get("online") or [])
        raise LookupError(f"no queue {queue} on {self.nodes[index].node}")

    async def queues(self, via: int = 0) -> list[dict[str, object]]:
        """Every queue with its type, leader, members, online members and messages."""
        text = await self.nodes[via].ctl(
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "online",
            "messages",
            "--formatter",
            "json",
            timeout=30,
        )
        rows: list[dict[str, object]] = json.loads(text)
        return rows

    def logs(self) -> str:
        return "\n".join(f"== {node.node}\n{node.logs()[-2000:]}" for node in self.nodes)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)
        with contextlib.suppress(OSError):
            os.chmod(self._home / ".erlang.cookie", 0o600)
        shutil.rmtree(self._home, ignore_errors=True)
