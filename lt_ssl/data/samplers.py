"""Visiting orders for the training loop that arrange batches by per-image labels (pseudo-labels)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import DataError


def round_robin_order(labels: Tensor, generator: torch.Generator) -> Tensor:
    """G-SimCLR's batch order: a permutation of the n images that deals the labels out round by round.

    labels: (n,) long, any values -> (n,) long permutation. Round r holds the r-th member of every label that
    has more than r members, each label once; rounds follow each other. Cut into consecutive batches, a batch
    therefore holds distinct labels as long as the labels still in play outnumber the batch (with K labels and
    batch size K, the first min-count rounds are exactly one image per label per batch); once the small labels
    run out, the later batches hold the big labels' remaining members.

    From the reference code (ariG23498/G-SimCLR, SimCLR_Pseudo_Labels_Training.ipynb): each image gets its dense
    rank within its k-means cluster and the training set is sorted by that rank, then batched in order without
    shuffling. The reference ranks by image index and never reshuffles; here the members of each label are
    shuffled and the labels' order within a round is shuffled, both from `generator`, so every epoch draws a
    new order with the same property.
    """
    if labels.dim() != 1:
        raise DataError(f"labels must be 1-D (n,), got shape {tuple(labels.shape)}")
    n = labels.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    values, dense = torch.unique(labels.cpu(), return_inverse=True)  # dense ids 0..L-1
    num = values.shape[0]
    shuffle = torch.randperm(n, generator=generator)  # members of a label in random order
    label_rank = torch.randperm(num, generator=generator)  # order of the labels within each round
    lab = label_rank[dense[shuffle]]  # (n,) the shuffled images' relabelled ids
    by_label = torch.sort(lab, stable=True).indices  # positions in `shuffle`, grouped by label
    counts = torch.bincount(lab, minlength=num)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[by_label] = torch.arange(n) - starts[lab[by_label]]  # each image's place within its label
    key = rank * num + lab  # round first, then the label's place in the round
    return shuffle[torch.argsort(key)]
