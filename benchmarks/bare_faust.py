"""A Faust agent that only iterates the events topic (the baseline of bench ingest).

Same app configuration and batch size as the real ingest agent; prints one JSON line with the
time from the first to the N-th message, then exits.
"""

from __future__ import annotations

import os
import sys
import time

import faust
import orjson

from streaming.ingest.app import create_app
from streaming.settings import Settings


def main() -> None:
    settings = Settings.load()
    target = int(sys.argv[1])
    app = create_app(settings, app_id=f"bench-bare-{os.getpid()}")
    app.agents.clear()  # drop the ingest agent; keep the same broker/consumer configuration
    topic = app.topic(settings.topics.events, key_type=bytes, value_type=bytes)
    state = {"n": 0, "first": 0.0, "first_batch": 0}

    @app.agent(topic, name="bare")
    async def bare(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.stream.batch_size,
                                              within=settings.stream.batch_wait_ms / 1000):
            if not state["n"]:
                state["first"] = time.perf_counter()
                state["first_batch"] = len(batch)
            state["n"] += len(batch)
            if state["n"] >= target:
                elapsed = time.perf_counter() - state["first"]
                # Rate over the messages after the first batch, like the full agent's measurement.
                rate = (state["n"] - state["first_batch"]) / elapsed
                print(orjson.dumps({"n": state["n"], "elapsed_s": elapsed, "rate": rate}).decode(),
                      flush=True)
                os._exit(0)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False,
                          override_logging=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
