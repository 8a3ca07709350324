"""Two independently augmented views of each (unlabeled) test image, plus its index in the test set."""
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.seed import epoch_seed


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


class SeededTwoViews(TwoViews):
    """``TwoViews`` whose views of image i are fixed by (``seed``, i) alone: the transform's random
    draws come from torch's generator seeded for that image (in a forked RNG state, so the caller's
    is untouched), whichever other images are drawn, in whichever order or worker."""

    def __init__(self, dataset, indices=None, seed=0):
        super().__init__(dataset, indices)
        self.seed = int(seed)

    def __getitem__(self, j):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(epoch_seed(self.seed, int(self.indices[j])))
            return super().__getitem__(j)
