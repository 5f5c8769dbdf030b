"""Agents spread over several client processes, so the HTTP client is not what limits N = 64-256.

One Python process with one asyncio loop tops out below what a GPU server streams at high
concurrency (on an H100 at N=64: ~6,300 tok/s through one client vs ~6,860 in the engine). A
``ClientPool`` starts K processes once (spawned: nothing inherited but their arguments), each with its
own client and event loop; a run hands each process a slice of the agents, all processes start
together at a barrier, and their ``AgentStats`` merge into one run (wall time from the first start
to the last end, on the shared wall clock).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing as mp
from typing import Any

from emolab.bench.load import AgentStats, run_agents

__all__ = ["ClientPool", "split_agents"]


def split_agents(agents: int, parts: int) -> list[range]:
    """``agents`` ids split into at most ``parts`` contiguous, non-empty slices of near-equal size."""
    parts = max(1, min(parts, agents))
    bounds = [round(i * agents / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def _serve(base_url: str, api_key: str | None, model: str, inbox: Any, outbox: Any, barrier: Any) -> None:
    """A client process: run the agent slices it is sent until it gets None."""
    from emolab.api_client import AsyncSteeringClient

    async def main() -> None:
        client = AsyncSteeringClient(base_url, api_key=api_key or None, model=model, timeout=600)
        try:
            while True:
                job = inbox.get()
                if job is None:
                    return
                scenario, agent_ids, kwargs = job
                await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
                outbox.put(await run_agents(client, scenario, agent_ids, **kwargs))
        finally:
            await client.close()

    asyncio.run(main())


class ClientPool:
    """K client processes that run the agents of each scenario together."""

    def __init__(self, base_url: str, api_key: str | None, model: str, processes: int) -> None:
        context = mp.get_context("spawn")
        self.size = processes
        self._barrier = context.Barrier(processes)
        self._inboxes = [context.Queue() for _ in range(processes)]
        self._outbox = context.Queue()
        self._processes = [
            context.Process(target=_serve, args=(base_url, api_key, model, inbox, self._outbox, self._barrier),
                            daemon=True)
            for inbox in self._inboxes
        ]
        for process in self._processes:
            process.start()

    def run(self, scenario: str, agents: int, **kwargs: Any) -> AgentStats:
        """One run of ``agents`` agents over the pool (every process gets a slice, even an empty one)."""
        slices = split_agents(agents, self.size)
        slices += [range(0)] * (self.size - len(slices))  # every process must reach the barrier
        for inbox, agent_ids in zip(self._inboxes, slices, strict=True):
            inbox.put((scenario, agent_ids, kwargs))
        # An empty slice's stats hold no samples, and its start/end (at the shared barrier) lie inside the run's.
        return functools.reduce(AgentStats.merge, (self._outbox.get(timeout=3600) for _ in slices))

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
