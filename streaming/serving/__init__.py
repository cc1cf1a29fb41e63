"""Serving: scorer workers that rank users' candidates with the newest model into feeds in Redis.

- :mod:`~streaming.serving.worker`: ``streamrec score``; follows events and model updates and
  decides which users to re-score;
- :mod:`~streaming.serving.ranker`: loads checkpoints, reads users' state and candidates, scores
  them and keeps each user's top K;
- :mod:`~streaming.serving.feed_store`: the feeds in Redis, written by the scorers and read by apps.
"""
