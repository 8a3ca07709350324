"""A record's addendum: files that bench/records/add_views.py gave a record after it was made (the
view logits a record made with ``--skip_views`` lacks, and the test-time rows they make
possible), beside the record's own files, which stay as they were.

- ``views.npz``: the view logits (trainer/saved_logits.py, a views file);
- ``test_time_methods_views.json``: the new rows, laid out as ``test_time_methods.json``'s
  (``protocols`` -> method -> results, summary, seconds);
- ``addendum.json``: the files added with their SHA-256, and the commit, command, machine,
  precision and date that made them.

bench/records/report.py reads a record's addendum here (:func:`read_addendum`), merges the rows into
its test-time methods (:func:`merge`) and marks them as added later (:func:`added`, :func:`note`).
"""
import json
import re
from pathlib import Path

from utils.errors import UserError
from utils.safe_write import digest

WRITER = "bench/records/add_views.py"
ADDENDUM = "addendum.json"
VIEWS = "views.npz"
ROWS = "test_time_methods_views.json"
LATER = " (added later)"  # after the label of a row that came from an addendum
COMMIT = re.compile(r"[0-9a-f]{7,40}|unknown")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:\d{2})?")


def _object(path):
    """A JSON object of the addendum; missing or malformed: a UserError naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_not_finite)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {ADDENDUM} lists it") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{path}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def _not_finite(name):
    raise ValueError(f"{name} is not a finite number")


def read_addendum(folder):
    """The addendum of the record ``folder``, or None when it has none: {"commit",
    "uncommitted_changes", "date", "rows": {protocol: {method: row}}}. Every file it lists must be
    there with the SHA-256 it lists; anything else is a UserError naming the file and what was expected."""
    folder = Path(folder)
    path = folder / ADDENDUM
    if not path.exists() and not path.is_symlink():
        return None
    add = _object(path)
    if add.get("written_by") != WRITER:
        raise UserError(f"{path}: 'written_by' is {add.get('written_by')!r}; expected {WRITER!r}")
    files = add.get("files")
    if not isinstance(files, dict) or ROWS not in files:
        raise UserError(f"{path}: 'files' must list {ROWS} (and {VIEWS}) with their SHA-256")
    for key, pattern, expected in (("commit", COMMIT, "a git commit"), ("date", DATE, "an ISO date and time")):
        if not isinstance(add.get(key), str) or not pattern.fullmatch(add[key]):
            raise UserError(f"{path}: {key!r} is {add.get(key)!r}; expected {expected}")
    for name, entry in files.items():
        if Path(name).name != name or name in (".", "..") or not isinstance(entry, dict):
            raise UserError(f"{path}: 'files' entry {name!r}; expected a file name of the record with its 'sha256'")
        if not (folder / name).is_file() or (folder / name).is_symlink():
            raise UserError(f"{folder / name}: missing (or not a regular file); {ADDENDUM} lists it")
        if digest(folder / name) != entry.get("sha256"):
            raise UserError(f"{folder / name}: its SHA-256 is not the one {ADDENDUM} lists; a record's files are "
                            "never changed")
    rows = _object(folder / ROWS).get("protocols")
    if not isinstance(rows, dict) or not rows or not all(isinstance(r, dict) and r for r in rows.values()):
        raise UserError(f"{folder / ROWS}: 'protocols' must map each protocol to its rows")
    return {"commit": add["commit"], "uncommitted_changes": add.get("uncommitted_changes") is True,
            "date": add["date"], "rows": rows}


def merge(methods, addendum, folder):
    """The addendum's rows put into ``methods`` (a record's test_time_methods.json, loaded), after
    the rows of their protocol; a row the record has already is a UserError."""
    protocols = methods["protocols"]
    for protocol, rows in addendum["rows"].items():
        if not isinstance(protocols.get(protocol), dict):
            raise UserError(f"{Path(folder) / ROWS}: rows of protocol {protocol!r}, which test_time_methods.json "
                            "lacks; expected rows of its protocols")
        for label, row in rows.items():
            if label in protocols[protocol]:
                raise UserError(f"{Path(folder) / ROWS}: {protocol} / {label!r} is in test_time_methods.json "
                                "already; an addendum adds only rows a record lacks")
            protocols[protocol][label] = row
    return methods


def added(record, protocol, label):
    """Whether row ``label`` of ``protocol`` in a record that report.py loaded came from its addendum."""
    return label in ((record.get("addendum") or {}).get("rows", {}).get(protocol) or {})


def note(records):
    """The line under a table whose rows marked :data:`LATER` came from addenda: which commit made them."""
    made = [f"`{r['record']['name']}` at commit {a['commit'][:10]}"
            + (" with uncommitted changes" if a["uncommitted_changes"] else "") + f" on {a['date'][:10]}"
            for r in records if (a := r.get("addendum"))]
    return (f"Rows marked *{LATER.strip()}* were computed after the record was made, from view logits added to "
            f"it by `{WRITER}` (the record's `{ADDENDUM}`): " + "; ".join(made) + ".")
