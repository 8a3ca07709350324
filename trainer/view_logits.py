"""The views of TADE's test-time aggregation, computed once per call (docs/methods.md#shared-views).

The network is frozen, so the expert logits of a view of an image do not depend on which test set
the image was drawn into. For epoch e, one pair of strongly augmented views of every image the call
needs is drawn, fixed by (seed, e, image) alone, and passed through the network once; every test set
of the call (the eleven distributions, each protocol's subsets) then learns its weights from the
rows of its own images, in its own order (``SharedViewBatches``).

- ``ViewLogits``: epoch e's expert logits of both views, [N, 2, E, C] float32 on the CPU, rows by
  image index, computed on first use (from the network) or read from a saved-logits file;
- ``NetworkViews``: the ``ViewLogits`` of one call from the network, one per augmentation setting;
- ``SavedViews``: the same from the view logits a file holds (``test.py --save_logits --save_views``).

What a set of view logits was made with travels with it (``meta``): the data module's two-view
augmentation and its arguments, the pipeline, the seed and the epochs.
"""
import inspect
import json

import torch

from trainer.forward import network_outputs
from utils.errors import UserError
from utils.progress import progress
from utils.seed import epoch_seed


def augmentation_args(two_view_transform, augmentation):
    """The arguments the views are made with: the transform's defaults, updated by ``augmentation``
    (as JSON values, so tuples and lists compare equal)."""
    args = {name: p.default for name, p in inspect.signature(two_view_transform).parameters.items()
            if p.default is not inspect.Parameter.empty}
    args.update(augmentation or {})
    return json.loads(json.dumps(args))


class ViewLogits:
    """Epoch e's expert logits of one pair of views of every image: ``epoch(e)`` -> [N, 2, E, C]
    float32 (CPU), row i the views of image i. ``compute(e)`` makes an epoch on first use;
    ``available`` bounds the epochs (None: any)."""

    def __init__(self, compute, meta, available=None, what="view logits"):
        self._compute, self._epochs = compute, {}
        self.meta, self.available, self.what = meta, available, what

    def epoch(self, e):
        if e not in self._epochs:
            if self.available is not None and e >= self.available:
                raise UserError(f"{self.what}: epoch {e + 1} asked for, {self.available} held")
            self._epochs[e] = self._compute(e)
        return self._epochs[e]

    def computed(self):
        """How many epochs have been made (or read) so far."""
        return len(self._epochs)

    def stacked(self, epochs):
        """[epochs, N, 2, E, C]: the first ``epochs`` epochs (made now where needed), for saving."""
        return torch.stack([self.epoch(e) for e in range(epochs)])


class SharedViewBatches:
    """One test set's batches of view logits: each epoch its images ``indices`` in a new order from
    ``generator`` (as the per-set loader shuffles them), in batches of ``batch_size``, yielding
    (view-1 logits [b, E, C], view-2 logits, test-set index) of that epoch's shared views."""

    def __init__(self, views, indices, batch_size, generator, device):
        self.views, self.batch_size, self.generator = views, batch_size, generator
        self.indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        self.device = torch.device(device)

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def __call__(self, epoch):
        order = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
        rows = self.views.epoch(epoch)
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            z = rows[index].to(self.device)
            yield z[:, 0], z[:, 1], index


def network_epoch(net, perf, device, loader, num_images, desc):
    """[num_images, 2, E, C] float32: the expert logits of both views of each image ``loader``
    yields (view1, view2, image index) batches of; rows of images it does not yield stay zero."""
    out = None
    for x1, x2, index in progress(loader, desc):
        z = network_outputs(net, torch.cat([x1, x2]), perf, device)["logits"].float().cpu()
        if out is None:
            out = torch.zeros(num_images, 2, *z.shape[1:])
        index = torch.as_tensor(index, dtype=torch.int64).cpu()
        out[index, 0], out[index, 1] = z[:len(x1)], z[len(x1):]
    bad = int((~torch.isfinite(out)).flatten(1).any(1).sum())
    if bad:
        raise UserError(f"the network gives NaN or infinite logits on {bad} of {num_images} augmented views; expected "
                        "finite outputs (the checkpoint's weights are corrupt or too large); nothing is written")
    return out


class NetworkViews:
    """The shared views of one call, made by the network: ``(augmentation, epochs, num_workers)`` ->
    ``ViewLogits`` (one per augmentation setting, epochs made on first use).

    ``loader(seed, augmentation, num_workers)`` gives (view1, view2, index) batches of the images
    the call needs, image i's views fixed by (``seed``, i); epoch e uses ``epoch_seed(seed, e)``.
    ``two_view_transform`` is the data module's (its defaults name the arguments in ``meta``)."""

    def __init__(self, net, perf, device, loader, num_images, seed, two_view_transform, pipeline):
        self.net, self.perf, self.device, self.loader = net, perf, device, loader
        self.num_images, self.seed = num_images, int(seed)
        self.transform, self.pipeline = two_view_transform, pipeline
        self._made = {}

    def __call__(self, augmentation=None, epochs=None, num_workers=0):
        args = augmentation_args(self.transform, augmentation)
        key = json.dumps(args, sort_keys=True)
        if key not in self._made:
            meta = {"augmentation": getattr(self.transform, "__qualname__", str(self.transform)),
                    "augmentation_args": args, "pipeline": self.pipeline, "seed": self.seed,
                    "seed_per_epoch": "utils.seed.epoch_seed(seed, epoch)"}

            def compute(e):
                loader = self.loader(epoch_seed(self.seed, e), augmentation or {}, num_workers)
                return network_epoch(self.net, self.perf, self.device, loader, self.num_images,
                                     f"views epoch {e + 1}")
            self._made[key] = ViewLogits(compute, meta)
        return self._made[key]

    def describe(self):
        """How the views read so far were made (one entry per augmentation setting; None: none read)."""
        made = [{**v.meta, "epochs": v.computed()} for v in self._made.values() if v.computed()]
        return made[0] if len(made) == 1 else (made or None)


class SavedViews:
    """The view logits of a saved-logits file as the shared views of a call: the settings asked for
    must be the ones the file's views were made with, and the epochs at most the ones it holds."""

    def __init__(self, path, arrays, meta):
        self.path, self.arrays, self.meta = path, arrays, meta  # arrays: [epochs, N, 2, E, C]
        self._views = None

    def __call__(self, augmentation=None, epochs=None, num_workers=0):
        made = self.meta.get("augmentation_args", {})
        asked = json.loads(json.dumps(augmentation or {}))
        for key, value in asked.items():
            if made.get(key) != value:
                raise UserError(f"logits file {self.path}: its view logits were made with augmentation "
                                f"{json.dumps(made)}; test_time.args.augmentation asks {key}={json.dumps(value)}: "
                                "expected the settings the views were saved with")
        held = int(self.arrays.shape[0])
        if epochs is not None and epochs > held:
            raise UserError(f"logits file {self.path} holds {held} epoch(s) of view logits and the test-time config "
                            f"asks for {epochs}; save more with test.py --save_logits --save_views --view_epochs "
                            f"{epochs}, or lower --epochs")
        if self._views is None:
            self._views = ViewLogits(lambda e: torch.from_numpy(self.arrays[e].astype("float32")), self.meta,
                                     available=held, what=f"logits file {self.path}")
        return self._views

    def describe(self):
        """How the file's views were made (and how many epochs of them were read)."""
        return {**self.meta, "read_epochs": self._views.computed() if self._views is not None else 0,
                "file": self.path}
