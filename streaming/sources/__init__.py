"""Sources: event streams to send to the events topic.

- :mod:`~streaming.sources.synthetic`: a seedable synthetic stream with a known ground truth
  and concept drift;
- :mod:`~streaming.sources.replay`: public event logs (UCI Online Retail, OTTO) as event streams;
- :mod:`~streaming.sources.files`: readers of event files (JSON Lines, CSV) in the contract's schema;
- :mod:`~streaming.sources.emit`: validating records and sending them to Kafka at a given rate.
"""
