"""Where test.py and test_train.py write their results (``--out``): checked before any work, so
that neither a checkpoint, a config nor any other file that is not a result of the same script is
ever replaced, and an unwritable folder is found before the evaluation, not after it."""
import json
import os
from pathlib import Path

from utils.errors import UserError


def is_result_of(path, script):
    """Whether ``path`` is a results JSON that ``script`` wrote (``written_by``; files written before
    that key existed are recognised by their keys: test_train.py's name a ``method``)."""
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(payload, dict) or not isinstance(payload.get("distributions"), dict) \
            or "checkpoint" not in payload:
        return False
    if "written_by" in payload:
        return payload["written_by"] == script
    return ("method" in payload) == (script == "test_train.py")


def check_result_path(out, script, beside=()):
    """``out`` (the results JSON) and the files written ``beside`` it (CSV, plot, logits) must each be
    new, or be the previous results of ``script``; their folder must be writable."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; expected the path of a results .json file")
    if out.exists() and not is_result_of(out, script):
        raise UserError(f"--out {out} exists and is not a result file of {script} (a checkpoint, a config or "
                        "another file); refusing to replace it: choose another --out")
    for path in map(Path, beside):
        if path.exists() and not (out.exists() and is_result_of(out, script)):
            raise UserError(f"--out {out}: {path}, which {script} writes beside it, exists and belongs to no "
                            "earlier result of this script; refusing to replace it: choose another --out")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: folder {folder} is not writable; expected a writable place for the results "
                        "(choose another --out)")
    return out
