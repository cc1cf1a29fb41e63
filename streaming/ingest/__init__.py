"""Ingest: the Faust worker that turns events into feature state and labelled examples.

In the order of the data flow:

- :mod:`~streaming.ingest.worker`: ``streamrec worker``, runs one Faust worker process;
- :mod:`~streaming.ingest.app`: the Faust app, built from settings;
- :mod:`~streaming.ingest.topics`: its topic handles (events in; DLQ and examples out);
- :mod:`~streaming.ingest.agent`: the agent that takes batches of events and splits them by partition;
- :mod:`~streaming.ingest.processor`: one partition's batch: validate, read, plan, apply, produce;
- :mod:`~streaming.ingest.plan`: pure planning of a batch into ops, outbox records and counters;
- :mod:`~streaming.ingest.state_store`: the Redis reads and the atomic apply (scripts in ``lua/``);
- :mod:`~streaming.ingest.types`: the records passed between these steps.
"""
