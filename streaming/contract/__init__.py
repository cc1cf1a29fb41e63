"""The contract: every record that crosses a process boundary, and every shared name.

- :mod:`~streaming.contract.events`: the event apps send (``events`` topic) and its validation;
- :mod:`~streaming.contract.examples`: the labelled training example (``training-examples``),
  with the dense feature names and their digest;
- :mod:`~streaming.contract.updates`: the checkpoint announcement (``model-updates``);
- :mod:`~streaming.contract.feeds`: the ranked feed (Redis);
- :mod:`~streaming.contract.names`: every Redis key and consumer-group name.

Pure: no I/O, no client libraries; everything else in streamrec may import it, including
``models/``.
"""
