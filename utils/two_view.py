"""Two independently augmented views of each (unlabeled) test image, plus its index in the test set."""
import numpy as np
from torch.utils.data import Dataset


class TwoViews(Dataset):
    """Over a dataset returning (image, label) under the strong transform, restricted to
    ``indices``: yields (view1, view2, test-set index). The label is dropped: test-time
    aggregation sees no labels."""

    def __init__(self, dataset, indices=None):
        self.dataset = dataset
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = int(self.indices[j])
        x1, _ = self.dataset[i]
        x2, _ = self.dataset[i]
        return x1, x2, i
