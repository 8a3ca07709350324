"""The validation split's clean logits, computed once per checkpoint and kept beside it.

Label-shift methods calibrate on the validation split (docs/methods.md#prior-estimation). Its
forward pass costs more than the test pass when the split is large, and its result depends only on
the network and on which images the split holds, so it is cached:

    logits, targets = validation_logits(trained, device)

``trained`` is a ``trainer.build.Trained`` (``load_trained`` sets its ``path``). The result is the
per-expert logits [N, E, C] (float32, CPU) and targets [N] of ``trained.data.validation_set``, in
the split's order, bit for bit what ``collect_expert_logits`` returns on this machine the first time.

The cache file is ``<checkpoint stem>.validation-<split digest>.npz`` beside the checkpoint. It is
used only when the key stored in it equals the key of this call, field for field:

- ``checkpoint``: the checkpoint's content checksum (utils/content_checksum.py; the one stored in
  the checkpoint, else computed from its contents), the architecture section of the config it is
  run with, the forward precision (fp32 / bf16 / fp16) and whether batch norm is folded
  (``trainer.fold_batchnorm``);
- ``split``: the data module's type, the split's ``validation_info`` (source, per class, seed,
  counts, in-sample classes), the test transform, and a digest of the split's labels and images
  (pixel bytes for in-memory images, relative paths for listed ones; for these also the rule image
  files are read by, ``data_loader.image_file.RULE``);
- ``arrays``: a digest of the stored logits and targets (a file edited or torn inside is refused).

The arrays must also be what this module writes, whatever the digest says (whoever edits a file can
recompute one): finite float32 logits, int64 targets equal to the split's labels.

A cache that is missing is computed and written by the write rule (utils/safe_write.py: a
temporary file of a random name, opened exclusively, then renamed; a folder that cannot be written
only costs the cache, with a one-line notice). A cache that is truncated, unreadable, from another
checkpoint or of another split is ignored with a one-line notice saying why, recomputed and
replaced; it is never used and never an error. Its small ``key`` entry is read and compared first:
the arrays of another checkpoint's file are never decompressed, and this checkpoint's are read only
if their headers declare the shape the split has. A link, a FIFO or a device at the cache's path is
neither read nor replaced (nothing waits on a FIFO): a notice, and the call goes on without the
cache.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from utils.content_checksum import KEY as CHECKSUM_KEY, content_checksum
from utils.errors import UserError
from utils.npz_reader import open_npz
from utils.safe_write import atomic_file, special_file, write_reason

FORMAT = "validation-logits-1"
INFO_KEYS = ("source", "per_class", "seed", "counts", "in_sample_classes")


def _digest(*parts):
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            h.update(bytes(part))
        elif isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype}{a.shape};".encode())
            h.update(a.view(np.uint8).reshape(-1).data)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def checkpoint_key(trained, device="cpu"):
    """What fixes the network's outputs: content checksum, architecture config, forward precision."""
    ckpt = trained.checkpoint
    checksum = ckpt.get(CHECKSUM_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(checksum, str):  # a checkpoint written without one (the reference release's)
        body = {k: v for k, v in ckpt.items() if k != CHECKSUM_KEY} if isinstance(ckpt, dict) else ckpt
        checksum = content_checksum(body)
    precision = trained.perf.precision(device) if trained.perf is not None else "fp32"
    folded = bool(getattr(trained.perf, "fold_batchnorm", False))
    return {"checksum": checksum, "arch": _digest(trained.config["arch"]), "precision": precision,
            "fold_batchnorm": folded}


def split_key(data):
    """What fixes which images the split holds and how they are shown to the network."""
    ds = data.validation_set
    info = data.validation_info or {}
    images = getattr(ds, "images", None)  # listed images: their relative paths
    if images is None:
        images = getattr(ds, "data", None)  # in-memory images: their pixels
    content = _digest(np.asarray(ds.targets, dtype=np.int64),
                      np.asarray(images) if images is not None else repr(getattr(data, "validation_indices", None)))
    key = {"data_module": type(data).__name__, "info": {k: info.get(k) for k in INFO_KEYS},
           "transform": repr(getattr(ds, "transform", None)), "content": content}
    reader = getattr(ds, "reader", None)  # how image files are read (data_loader/image_file.py)
    if reader:
        key["reader"] = reader
    return key


def cache_path(checkpoint_path, split):
    path = Path(checkpoint_path)
    return path.with_name(f"{path.stem}.validation-{_digest(split)[:12]}.npz")


def _notice(message):
    print(f"note: validation cache {message}", flush=True)


def usable_place(path):
    """Whether the cache may be read and replaced at ``path``: not a link, FIFO, device or folder
    (else a notice: the call goes on without the cache)."""
    what = special_file(path)
    if what is not None:
        _notice(f"{path} is {what}; not read, not replaced: the split is computed without the cache")
        return False
    return True


def read_cache(path, key, shape=None, expected_targets=None):
    """(logits, targets) from ``path`` if its key equals ``key``; else None, with a notice saying why.
    The key entry is read first; ``shape`` (N, E, C), when given, is what the logits' header must
    declare before they are read. The arrays must then be what :func:`write_cache` writes: finite
    float32 logits and int64 targets, equal to ``expected_targets`` (the split's labels) when given, whatever
    the digest stored beside them says (a digest can be recomputed by whoever edits the file)."""
    if not path.exists():
        return None
    try:
        with open_npz(path, "validation cache") as f:
            stored = json.loads(str(f.read("key", limit=1 << 20)))
            if not isinstance(stored, dict):
                raise ValueError("its key is not a JSON object")
            for part in ("format", "checkpoint", "split"):
                if stored.get(part) != key[part]:
                    what = {"format": "an older format",
                            "checkpoint": "another checkpoint (or architecture, precision, folding)",
                            "split": "another validation split"}[part]
                    _notice(f"{path} is of {what}; recomputing it")
                    return None
            if shape is not None and (f.header("logits")[1] != tuple(shape) or f.header("targets")[1] != shape[:1]):
                _notice(f"{path} declares arrays of another shape than the split's {tuple(shape)}; recomputing it")
                return None
            logits, targets = f.read("logits"), f.read("targets")
    except (UserError, ValueError, RecursionError) as e:
        said = str(e).split(str(path), 1)[-1].strip(" :;") if isinstance(e, UserError) else ""
        reason = (said or "a torn or foreign file") if isinstance(e, UserError) else type(e).__name__
        _notice(f"{path} is unreadable ({reason}); recomputing it")
        return None
    if stored.get("arrays") != _digest(logits, targets):
        _notice(f"{path} does not match the digest stored in it; recomputing it")
        return None
    problem = _array_problem(logits, targets, expected_targets)
    if problem is not None:
        _notice(f"{path} holds {problem}; recomputing it")
        return None
    return torch.from_numpy(logits), torch.from_numpy(targets)


def _array_problem(logits, targets, expected_targets=None):
    """What is wrong with cached arrays that :func:`write_cache` would not have written, or None."""
    if logits.dtype != np.float32 or targets.dtype != np.int64:
        return f"logits of dtype {logits.dtype} and targets of dtype {targets.dtype} (expected float32 and int64)"
    if not np.isfinite(logits).all():
        return "NaN or infinite logits"
    if expected_targets is not None and not np.array_equal(targets, np.asarray(expected_targets, dtype=np.int64)):
        return "targets other than the split's labels"
    return None


def write_cache(path, key, logits, targets):
    """Write the cache by the write rule (utils/safe_write.py: a temporary file of a random name in
    the same folder, then rename); a place that cannot be written costs only the cache (a notice, no
    error). Returns whether it was written."""
    logits = np.ascontiguousarray(torch.as_tensor(logits).float().numpy())
    targets = np.ascontiguousarray(torch.as_tensor(targets).numpy().astype(np.int64))
    stored = {**key, "arrays": _digest(logits, targets)}
    try:
        with atomic_file(path) as f:
            np.savez(f, key=np.array(json.dumps(stored)), logits=logits, targets=targets)
        return True
    except (UserError, OSError) as e:
        reason = write_reason(e) if isinstance(e, OSError) else str(e)
        _notice(f"{path} could not be written ({reason}); the split is recomputed next time")
        return False


def validation_logits(trained, device="cpu", compute=None):
    """The validation split's clean per-expert logits [N, E, C] and targets [N] for ``trained``,
    from the cache beside its checkpoint when that cache is this checkpoint's and this split's, else
    computed (``compute()``, default: one pass of the network over the split) and cached.
    ``trained.path`` None (a network not loaded from a file) computes without caching."""
    if compute is None:
        def compute():
            from trainer.forward import collect_expert_logits
            return collect_expert_logits(trained.net, trained.data.validation_loader(device=device), device,
                                         trained.perf, desc="validation images")
    if getattr(trained, "path", None) is None:
        return compute()
    split = split_key(trained.data)
    key = {"format": FORMAT, "checkpoint": checkpoint_key(trained, device), "split": split}
    path = cache_path(trained.path, split)
    usable = usable_place(path)
    cached = read_cache(path, key, expected_shape(trained), trained.data.validation_set.targets) if usable else None
    if cached is not None:
        return cached
    logits, targets = compute()
    logits, targets = torch.as_tensor(logits).float().cpu(), torch.as_tensor(targets).long().cpu()
    if usable:
        write_cache(path, key, logits, targets)
    return logits, targets


def expected_shape(trained):
    """(N, E, C) of the split's logits, or None where the network or split does not say."""
    try:
        return (len(trained.data.validation_set.targets), int(trained.net.num_experts),
                int(trained.data.num_classes))
    except (AttributeError, TypeError):
        return None
