"""Per-feature standardisation of dense inputs that also trains on a batch of one."""

from __future__ import annotations

import torch
from torch import nn


class Standardise(nn.BatchNorm1d):
    """``B x D -> B x D``: BatchNorm without affine, running mean / variance (momentum 0.01).

    A training batch of one row has no variance to estimate, and ``nn.BatchNorm1d`` refuses it;
    such a batch is standardised with the running statistics instead, which it leaves as they
    are. So the trainer can train the last lone example of a stream that goes quiet rather than
    hold it (and its partition's committed offset, hence the consumer lag) until a second one
    arrives. The state dict is ``nn.BatchNorm1d``'s: checkpoints are unchanged.

    Args:
        num_features (int): ``D``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: B x D float32`` -> ``B x D``: batch statistics in training mode when ``B >= 2``,
        the running ones otherwise."""
        if self.training and x.shape[0] < 2:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var,
                                            training=False, eps=self.eps)
        return super().forward(x)
