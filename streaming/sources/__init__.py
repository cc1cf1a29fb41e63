"""Sources: event streams to send to the events topic.

- :mod:`~streaming.sources.synthetic`: a seedable synthetic stream with a known ground truth
  and concept drift;
- :mod:`~streaming.sources.replay`: logs to replay (UCI Online Retail, OTTO, or any file in the
  event contract, historical ones included) as event streams;
- :mod:`~streaming.sources.files`: readers of event files (JSON Lines, CSV) in the contract's schema;
- :mod:`~streaming.sources.emit`: validating records and sending them to Kafka at a given rate.
"""
