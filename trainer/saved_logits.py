"""Clean per-expert logits saved to one compressed ``.npz`` file, and what post-hoc methods need to
run from it without the network or the data.

``test.py --save_logits`` writes it; ``bench/studies/test_time_methods.py --logits FILE`` and recorded runs
(``results/*/logits.npz``) read it. Keys:

- ``test_logits`` [N, E, C], ``test_targets`` [N]; ``validation_*`` and ``training_*`` likewise
  (absent when there is no validation split / when not saved);
- ``cls_num_list`` [C] (training counts: the training prior and the many/medium/few groups);
- ``distribution_names`` and ``distribution_<name>``: the test distributions as index arrays;
- ``meta``: a JSON string (data module type, classes, experts, checkpoint, epoch, validation_info);
- with ``--save_views``: ``view_logits`` [epochs, N, 2, E, C], epoch e's expert logits of one pair
  of augmented views of each test image (the shared views of self-supervised aggregation,
  trainer/view_logits.py), and ``views_meta``, a JSON string saying how they were made
  (augmentation and its arguments, pipeline, seed, epochs).

A *views file* (``views.npz`` of a record's addendum, bench/records/add_views.py) holds only
``view_logits``, ``views_meta``, the ``test_targets`` they go with and a ``meta`` JSON string:
``load_logits(FILE, views=VIEWS)`` reads it beside a file of clean logits that has no views.

Logits are stored as float16 or float32 (``dtype``); they are read back as float32.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from trainer.view_logits import SavedViews
from utils.long_tail import shot_masks
from utils.errors import UserError, shown
from utils.npz_reader import open_npz
from utils.safe_write import atomic_file

SPLITS = ("test", "validation", "training")
DTYPES = ("float16", "float32")
VIEW_KEYS = ("view_logits", "views_meta", "test_targets")  # a views file's arrays (and ``meta``)


def save_logits(path, splits, cls_num_list, distributions, meta, dtype="float32", views=None):
    """``splits``: {"test" | "validation" | "training": (logits [N, E, C], targets [N])}; ``views``:
    None or (view logits [epochs, N, 2, E, C] of the test images, what made them: a dict)."""
    if dtype not in DTYPES:
        raise UserError(f"--logits_dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    arrays = {"cls_num_list": np.asarray(cls_num_list, dtype=np.int64), "meta": np.array(json.dumps(meta)),
              "distribution_names": np.array(list(distributions), dtype=str)}
    if views is not None:
        arrays["view_logits"] = torch.as_tensor(views[0]).float().numpy().astype(dtype)
        arrays["views_meta"] = np.array(json.dumps({**views[1], "epochs": int(views[0].shape[0])}))
    for name, (logits, targets) in splits.items():
        arrays[f"{name}_logits"] = torch.as_tensor(logits).float().numpy().astype(dtype)
        arrays[f"{name}_targets"] = torch.as_tensor(targets).numpy().astype(np.int64)
    for name, idx in distributions.items():
        arrays[f"distribution_{name}"] = np.asarray(idx, dtype=np.int64)
    return _write(path, arrays)


def save_views(path, arrays, meta):
    """A views file: :data:`VIEW_KEYS` of ``arrays`` (a saved-logits file's, as stored) and ``meta``
    (a dict: what made them)."""
    return _write(path, {**{k: arrays[k] for k in VIEW_KEYS}, "meta": np.array(json.dumps(meta))})


def _write(path, arrays):
    path = Path(path)
    with atomic_file(path) as f:  # a unique temporary name: two runs at once never share one
        np.savez_compressed(f, **arrays)
    return path


@dataclass
class OfflineData:
    """The parts of a data module post-hoc methods read: classes, training counts, test labels and
    distributions, the validation split's facts."""
    num_classes: int
    cls_num_list: list
    test_targets: np.ndarray
    distributions: dict
    validation_info: Optional[dict] = None
    has_validation: bool = False
    type_name: str = ""
    # what a method calibrated on the validation split asks for when the file holds none
    validation_option = "a logits file that holds one (test.py --save_logits on data with a validation split)"

    def shot_masks(self):
        return shot_masks(self.cls_num_list)

    def test_distributions(self):
        return self.distributions


@dataclass
class OfflineNet:
    num_experts: int


@dataclass
class SavedLogits:
    """A loaded file: ``splits[name] = (logits float32 [N, E, C], targets int64 [N])``."""
    path: str
    splits: dict
    data: OfflineData
    net: OfflineNet
    meta: dict = field(default_factory=dict)
    views: Optional[SavedViews] = None  # the shared views of self-supervised aggregation, if saved

    def source(self, split):
        """A ``() -> (logits, targets)`` callable for a TestTimeContext, or None if not saved."""
        if split not in self.splits:
            return None
        value = self.splits[split]
        return lambda: value


def load_logits(path, views=None):
    """Read a saved-logits file (and the views file ``views`` beside it); a missing or malformed one
    is a one-line error naming the file and the key."""
    path = Path(path)
    with open_npz(path, "logits file") as f:  # a torn, pickled or special file is one line (utils/npz_reader.py)
        arrays = {k: f.read(k) for k in f.files}
    views_path = path
    if views is not None:
        views_path = Path(views)
        arrays.update(_views_file(path, views_path, arrays))
    for key in ("test_logits", "test_targets", "cls_num_list", "meta", "distribution_names"):
        if key not in arrays:
            raise UserError(f"logits file {path}: missing key {key!r} (write it with test.py --save_logits)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except (ValueError, RecursionError) as e:
        raise UserError(f"logits file {path}: key 'meta' is not JSON ({e})")
    if not isinstance(meta, dict):
        raise UserError(f"logits file {path}: key 'meta' is not a JSON object")
    _check_meta(path, meta)
    counts = arrays["cls_num_list"]
    if counts.ndim != 1 or not len(counts) or counts.dtype.kind not in "iu" or (counts < 1).any():
        raise UserError(f"logits file {path}: cls_num_list must list each class's training count as an integer >= 1 "
                        f"(got dtype {counts.dtype}, shape {counts.shape})")
    splits = {}
    for name in SPLITS:
        if f"{name}_logits" not in arrays:
            continue
        if f"{name}_targets" not in arrays:
            raise UserError(f"logits file {path}: {name}_logits without {name}_targets")
        logits, targets = arrays[f"{name}_logits"], arrays[f"{name}_targets"]
        if logits.ndim != 3 or logits.shape[2] != len(counts) or targets.ndim != 1 or len(targets) != len(logits) \
                or not len(logits) or logits.shape[1] < 1:
            raise UserError(f"logits file {path}: {name}_logits of shape {logits.shape} with targets of shape "
                            f"{targets.shape}; expected [N, E, {len(counts)}] with N >= 1 and N targets")
        if logits.dtype.kind != "f" or not np.isfinite(logits).all():
            raise UserError(f"logits file {path}: {name}_logits must be finite floating-point numbers (NaN, infinite "
                            f"or non-float values found, dtype {logits.dtype})")
        if targets.dtype.kind not in "iu" or (targets < 0).any() or (targets >= len(counts)).any():
            raise UserError(f"logits file {path}: {name}_targets must be class indices in 0..{len(counts) - 1}")
        splits[name] = (torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(targets.astype(np.int64)))
    names = [str(n) for n in arrays["distribution_names"].reshape(-1)]
    missing = [n for n in names if f"distribution_{n}" not in arrays]
    if missing:
        raise UserError(f"logits file {path}: distribution {missing[0]!r} is named but distribution_{missing[0]} is "
                        "missing")
    distributions = {n: arrays[f"distribution_{n}"] for n in names}
    n_test = len(splits["test"][1])
    for n, idx in distributions.items():
        if idx.ndim != 1 or not len(idx) or idx.dtype.kind not in "iu" or (idx < 0).any() or (idx >= n_test).any():
            raise UserError(f"logits file {path}: distribution_{n} must be at least one index into the {n_test} test "
                            "images")
    views = _views(views_path, arrays, splits["test"][0].shape)
    data = OfflineData(num_classes=len(counts), cls_num_list=counts.tolist(),
                       test_targets=splits["test"][1].numpy(), distributions=distributions,
                       validation_info=meta.get("validation_info"), has_validation="validation" in splits,
                       type_name=meta.get("data_loader", ""))
    return SavedLogits(str(path), splits, data, OfflineNet(int(splits["test"][0].shape[1])), meta, views)


def _check_meta(path, meta):
    """The fields of ``meta`` the methods read: ``data_loader`` a name, ``validation_info`` an object
    whose ``counts`` are per-class image counts (a hand-edited file is one line, not a crash later)."""
    if not isinstance(meta.get("data_loader", ""), str):
        raise UserError(f"logits file {path}: meta's data_loader is {shown(meta['data_loader'])}; expected the name "
                        "of a data module")
    info = meta.get("validation_info")
    if info is None:
        return
    counts = info.get("counts", []) if isinstance(info, dict) else None
    if not isinstance(counts, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                               for n in counts):
        raise UserError(f"logits file {path}: meta's validation_info is {shown(info)}; expected an object whose "
                        "counts list the split's images per class (integers >= 0)")


def _views_file(path, views, arrays):
    """The view logits of the views file ``views``, checked to be of the test images of the logits file
    ``path`` (the same targets in the same order), which must hold none of its own."""
    if "view_logits" in arrays:
        raise UserError(f"logits file {path} holds view logits of its own; expected a views file only beside a file "
                        "without them")
    with open_npz(views, "views file") as f:
        found = {k: f.read(k) for k in VIEW_KEYS if k in f.files}
    missing = [k for k in VIEW_KEYS if k not in found]
    if missing:
        raise UserError(f"views file {views}: missing key {missing[0]!r} (expected {', '.join(VIEW_KEYS)}: "
                        "bench/records/add_views.py writes them)")
    targets = found.pop("test_targets")
    if "test_targets" in arrays and not np.array_equal(targets, arrays["test_targets"]):
        raise UserError(f"views file {views}: its test_targets differ from those of logits file {path}; expected the "
                        "views of the same test images in the same order")
    return found


def _views(path, arrays, test_shape):
    """The file's view logits as a call's shared views (None without them), checked like the rest."""
    if "view_logits" not in arrays:
        return None
    views = arrays["view_logits"]
    n, e, c = test_shape
    if views.ndim != 5 or tuple(views.shape[1:]) != (n, 2, e, c) or views.shape[0] < 1:
        raise UserError(f"logits file {path}: view_logits of shape {views.shape}; expected [epochs, {n}, 2, {e}, {c}] "
                        "(epochs >= 1; both views of each test image)")
    if views.dtype.kind != "f" or not np.isfinite(views).all():
        raise UserError(f"logits file {path}: view_logits must be finite floating-point numbers (dtype {views.dtype})")
    try:
        meta = json.loads(str(arrays["views_meta"])) if "views_meta" in arrays else None
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("augmentation_args"), dict):
        raise UserError(f"logits file {path}: view_logits without a views_meta JSON object naming their "
                        "augmentation_args (write them with test.py --save_logits --save_views)")
    return SavedViews(str(path), views, meta)
