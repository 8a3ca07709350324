"""Where test.py and test_train.py write their results (``--out``): checked before any work by the
project's write rule (utils/safe_write.py), so that neither a checkpoint, a config, a recorded
result nor any other file that is not a result of the same script is ever replaced, nothing is
written through a link, and an unwritable folder is found before the evaluation, not after it."""
import zipfile
from pathlib import Path

from utils.safe_write import WriteRefused, check_beside, check_target, owned_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _legacy(script):
    """Results written before ``written_by`` existed: test_train.py's name a ``method``."""
    def recognise(payload):
        return isinstance(payload.get("distributions"), dict) and "checkpoint" in payload \
            and ("method" in payload) == (script == "test_train.py")
    return recognise


def is_result_of(path, script):
    """Whether ``path`` is a results JSON that ``script`` wrote."""
    return owned_json(path, script, _legacy(script))


def _starts_with(path, prefix):
    try:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False


def _is_logits_npz(path):
    try:
        with zipfile.ZipFile(path) as z:
            return "test_logits.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


# Side files of a result written before results listed their files' hashes, recognised by format.
SIGNATURES = {".csv": lambda p: _starts_with(p, b"distribution,"), ".png": lambda p: _starts_with(p, PNG_MAGIC),
              ".npz": _is_logits_npz}


def check_result_path(out, script, beside=()):
    """``out`` (the results JSON) and the files written ``beside`` it (CSV, plot, logits) must each be
    new, or be the previous results of ``script`` (side files: byte for byte the ones it listed)."""
    out = Path(out)
    if out.is_dir() and not out.is_symlink():
        raise WriteRefused(f"--out {out} is a folder; expected the path of a results .json file")
    if any(Path(side).absolute() == out.absolute() for side in beside):  # x.csv: the table would replace the JSON
        raise WriteRefused(f"--out {out}: {script} writes a file of that name beside the results too (its table "
                           f"or plot); expected the path of a results .json file, e.g. {out.with_suffix('.json')}")
    check_target(out, script, legacy=_legacy(script))
    check_beside(out, beside, script, legacy=_legacy(script), signatures=SIGNATURES)
    return out
