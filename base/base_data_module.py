"""What every dataset gives the trainer and the test scripts.

A data module owns a long-tailed training set, a test set and, where the data allows one, a
labelled validation split that the network never trains on and that is not the test set. Training
asks it for a loader per epoch (seeded, so a resumed run sees the same batches); model selection
and the calibration of test-time methods use the validation split; evaluation asks for the test
set with the test transform, the named test distributions (index subsets of the test set), and the
same test images under another transform (the two-view augmentation of test-time aggregation).

The validation split (``validation_set``, ``validation_info``) is computed from the data module's
config alone, so a checkpoint whose config names no split gets the same one as a new run. Its
``validation_info`` says where it came from: ``source`` (how it was made), ``per_class`` (asked
for), ``counts`` (images per class), ``in_sample_classes`` (classes whose validation images are
training images, because the training selection left none of theirs over) and ``option`` (the
config key that sets it).

``class_names`` names the classes (index k -> name; default "0".."C-1"); training stores them in
every checkpoint and the test scripts name classes by them. ``split_files()`` returns files the
run folder should hold to make the data split reproducible ({file name: text}; default none).
"""
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from utils.errors import UserError
from utils.long_tail import shot_masks
from utils.seed import epoch_seed
from utils.two_view import SeededTwoViews, TwoViews


class LTDataModule:
    num_classes: int
    train_set = None  # Dataset with .targets
    test_set = None  # Dataset with .targets, test transform
    validation_set = None  # Dataset with .targets, test transform; None: this data module has no split
    validation_info = None  # dict (see the module docstring) when validation_set is set
    validation_option = "data_loader.args.validation"  # the config key that configures the split

    def __init__(self, batch_size=128, num_workers=0, pin_memory=False, persistent_workers=False,
                 shuffle=True, drop_last=False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.shuffle = shuffle
        self.drop_last = drop_last

    @property
    def class_names(self):
        """Class k's name (a data module whose classes have names sets ``class_names`` itself)."""
        return [str(k) for k in range(self.num_classes)]

    def split_files(self):
        """{file name: text} written into the run folder beside config.json (e.g. a held-out split)."""
        return {}

    # -- training -------------------------------------------------------------------------------
    @property
    def cls_num_list(self):
        """Per-class training counts (used by the losses and for the shot groups)."""
        return np.bincount(np.asarray(self.train_set.targets), minlength=self.num_classes).tolist()

    def shot_masks(self):
        return shot_masks(self.cls_num_list)

    def rank_batch_size(self, world_size):
        """Each of ``world_size`` processes takes batch_size / world_size of the global batch. With
        ``drop_last`` (the last, partial batch of an epoch left out) the training set must fill one batch."""
        if self.batch_size % world_size:
            lower = self.batch_size - self.batch_size % world_size
            options = f"--bs {lower} or --bs {lower + world_size}" if lower else f"--bs {world_size}"
            raise UserError(f"data_loader.args.batch_size {self.batch_size} is the global batch and must be "
                            f"divisible by the number of processes ({world_size}); use {options}")
        if self.drop_last and self.train_set is not None and len(self.train_set) < self.batch_size:
            raise UserError(f"data_loader.args.drop_last: the {len(self.train_set)} training images do not fill one "
                            f"batch of {self.batch_size}, so an epoch would train on nothing; use a batch size of at "
                            f"most {len(self.train_set)} (--bs) or drop_last false")
        return self.batch_size // world_size

    def _sampler(self, epoch, seed, rank, world_size):
        """DistributedSampler deals the epoch's permutation out round-robin, so step k of rank r takes
        every world_size-th image of global batch k: the global batches, and hence the gradients,
        are those of one process with the same batch size, whatever the number of processes (when
        the epoch's length divides by the batch; the last, partial batch is split with padding)."""
        self.rank_batch_size(world_size)
        sampler = DistributedSampler(self.train_set, num_replicas=world_size, rank=rank, shuffle=self.shuffle,
                                     seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
        return sampler

    def epoch_order(self, epoch, seed, rank=0, world_size=1):
        """This rank's training indices for the epoch, in the order ``train_loader`` visits them
        (DistributedSampler's: a (seed + epoch) permutation, padded, then every world_size-th)."""
        return list(iter(self._sampler(epoch, seed, rank, world_size)))

    def train_loader(self, epoch, seed, rank=0, world_size=1, device=None):
        """This epoch's loader. The data order depends only on (seed, epoch), the augmentation
        seeds on (seed, epoch, rank); the global batch is split evenly over ``world_size`` ranks.
        ``device`` is where the training step runs: device-resident pipelines put their batches there."""
        sampler = self._sampler(epoch, seed, rank, world_size)
        # Worker augmentation seeds differ per rank (else every rank would crop and flip alike).
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch) + rank)
        return DataLoader(self.train_set, batch_size=self.rank_batch_size(world_size), sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, drop_last=self.drop_last,
                          generator=generator, persistent_workers=False)

    # -- evaluation -----------------------------------------------------------------------------
    def test_loader(self, indices=None, batch_size=None, dataset=None, shuffle=False, generator=None, device=None):
        """Batches of the test set (or ``dataset``), optionally only ``indices``. ``device``: where
        the forward pass runs (device-resident pipelines put their batches there)."""
        dataset = self.test_set if dataset is None else dataset
        if indices is not None:
            dataset = Subset(dataset, np.asarray(indices).tolist())
        return DataLoader(dataset, batch_size=batch_size or self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, generator=generator,
                          persistent_workers=self.persistent_workers)

    # -- validation -----------------------------------------------------------------------------
    @property
    def has_validation(self):
        return self.validation_set is not None and len(self.validation_set) > 0

    def require_validation(self, who):
        """Raise a one-line error naming the option when there is no validation split."""
        if not self.has_validation:
            from utils.errors import UserError
            raise UserError(f"{who} needs a validation split, and {type(self).__name__} has none; configure one "
                            f"with {self.validation_option}")

    def validation_loader(self, indices=None, batch_size=None, device=None):
        """Batches of the validation split (optionally only ``indices``) under the test transform, in order."""
        self.require_validation("the validation loader")
        return self.test_loader(indices=indices, dataset=self.validation_set, batch_size=batch_size, device=device)

    @property
    def validation_targets(self):
        return np.asarray(self.validation_set.targets) if self.validation_set is not None else np.zeros(0, int)

    @property
    def test_targets(self):
        return np.asarray(self.test_set.targets)

    def test_distributions(self):
        """Ordered ``{name: indices into test_set}`` (docs/methods.md#test-distributions); subclasses define it."""
        raise NotImplementedError

    def test_view_dataset(self, transform):
        """The test images under another transform (for test-time aggregation)."""
        raise NotImplementedError

    def reference_dataset(self):
        """The training images under the test transform: labelled data a test-time method may use
        (for calibration or the model's own class marginal), unlike the test labels."""
        raise NotImplementedError

    def reference_loader(self, batch_size=None, device=None):
        """Batches of ``reference_dataset()`` (in order). ``device``: where the forward pass runs."""
        return self.test_loader(dataset=self.reference_dataset(), batch_size=batch_size, device=device)

    def two_view_loader(self, indices, batch_size, generator, num_workers=0, device=None, **augmentation):
        """Shuffled (view1, view2, test-set index) batches of the test images ``indices`` under the
        strong augmentation of test-time aggregation (docs/methods.md#test-time-aggregation;
        ``augmentation``: the test-time config's keys for ``two_view_transform``). Each pass
        reshuffles and draws new views, the order from ``generator``. ``device``: where the forward
        pass runs."""
        strong = self.test_view_dataset(self.two_view_transform(**augmentation))
        return DataLoader(TwoViews(strong, indices), batch_size=batch_size, shuffle=True, generator=generator,
                          num_workers=num_workers)

    def seeded_two_view_loader(self, indices, seed, batch_size, num_workers=0, device=None, **augmentation):
        """(view1, view2, test-set index) batches of the test images ``indices`` in that order, under
        the same strong augmentation; image i's two views are fixed by (``seed``, i) alone, not by
        the other images drawn with it (the shared views of test-time aggregation, one ``seed`` per
        epoch)."""
        strong = self.test_view_dataset(self.two_view_transform(**augmentation))
        return DataLoader(SeededTwoViews(strong, indices, seed), batch_size=batch_size, shuffle=False,
                          num_workers=num_workers, generator=torch.Generator().manual_seed(seed))  # global RNG kept
