"""Features: pure feature, label and candidate logic (no I/O), shared by ingest and serving.

- :mod:`~streaming.features.state`: the feature state's Redis layout, its update rules, and the
  dense model inputs computed from it (the same code for training examples and for serving);
- :mod:`~streaming.features.labels`: the labelling rules that join events into training examples;
- :mod:`~streaming.features.candidates`: candidate generation for a user's feed;
- :mod:`~streaming.features.neighbours`: user-based nearest neighbours (TIFU-KNN style) over
  user x item vectors.
"""
