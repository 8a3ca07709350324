"""A checksum of a checkpoint's contents (tensors, numbers, strings, lists, dicts), stored in the
checkpoint as ``checksum`` and checked when it is loaded: corruption inside the tensor data (which
``torch.load`` does not notice) is refused instead of loading as NaN or garbage weights.

The digest covers every key, value, dtype, shape and tensor byte in order; it is computed on the
CPU tensors that are written and read, so a checkpoint saved on a GPU verifies anywhere.
"""
import hashlib

import torch

KEY = "checksum"
ALGORITHM = "blake2b-128"


def content_checksum(obj):
    """``"blake2b-128:HEX"`` of ``obj`` (the checkpoint dict without its ``checksum`` entry)."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, obj)
    return f"{ALGORITHM}:{h.hexdigest()}"


def _feed(h, obj):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def with_checksum(obj):
    """A dict checkpoint with its ``checksum`` added (other objects unchanged)."""
    if not isinstance(obj, dict):
        return obj
    body = {k: v for k, v in obj.items() if k != KEY}
    return {**body, KEY: content_checksum(body)}


def checksum_mismatch(obj):
    """None if ``obj`` carries no checksum (older checkpoints, other files) or it matches; else the
    stored and the computed digests."""
    if not isinstance(obj, dict) or not isinstance(obj.get(KEY), str) or not obj[KEY].startswith(ALGORITHM):
        return None
    body = {k: v for k, v in obj.items() if k != KEY}
    actual = content_checksum(body)
    return None if actual == obj[KEY] else (obj[KEY], actual)
