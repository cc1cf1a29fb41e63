"""Prequential evaluation of the whole loop on a replayed stream (``streamrec eval``).

Every window is scored before anything trains on it: click AUC / log-loss of the examples the
label joiner emits, Recall@K / NDCG@K of top-K feeds against each user's next interactions.
The continuously trained DLRM is compared in the same run with a frozen copy, a batch-retrained
LightGBM model, decayed popularity and co-visitation.
"""
