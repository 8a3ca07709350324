"""A record holds no machine paths: what reproduces a run, not where it ran.

``bench/records/record.py`` trains in a work folder outside the repository and reads the data from a folder
of the recording machine; both show up in the files it keeps (the resolved config, the results'
``checkpoint`` entries, the training log, the logits' metadata, the small weights' config). Before
a record is moved into ``results/`` every such path is rewritten to a placeholder:

- ``DATA``: the data folder (``--data_dir``), described in ``record.json["data"]`` by what it is
  (the data module and the SHA-256 of each of its files), so another copy can be checked;
- ``WORK_DIR``: the folder training ran in (``--work_dir``);
- a path inside the repository becomes relative to it (``results/...``, ``configs/...``).

    python bench/records/portable_record.py results/*/

lists every machine path left in the records named (exit 1 if there is one). A folder that is
missing, or a file of it that cannot be read (a torn or pickled ``.npz``, a corrupt ``model.pth``,
a log that is not UTF-8), is one line naming it and exit 2; nothing is written.
"""
import argparse
import hashlib
import io
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT

from utils.cli import ArgumentParser
from utils.errors import UserError, cli_entry

HASH_LIMIT = 4 << 30  # data folders up to this many bytes are fingerprinted file by file
ABSOLUTE = re.compile(r"(?<![\w.])/(?:root|home|tmp|work|mnt|data|Users|scratch|var)/[^\s\"',;)\]]*")


def places(data_dir=None, work_dir=None, repo=ROOT):
    """(machine path, placeholder) pairs, longest path first so a nested folder wins."""
    pairs = []
    for path, name in ((data_dir, "DATA"), (work_dir, "WORK_DIR")):
        if path:
            pairs.append((str(path).rstrip("/"), name))
            pairs.append((str(Path(path).expanduser().resolve()), name))
    pairs.append((str(Path(repo).resolve()), "."))
    seen, out = set(), []
    for path, name in sorted(pairs, key=lambda p: -len(p[0])):
        if path and path not in seen and path != "/":
            seen.add(path)
            out.append((path, name))
    return out


def rewrite(text, pairs):
    """``text`` with each machine path of ``pairs`` replaced by its placeholder (whole path components only)."""
    for path, name in pairs:
        pattern = re.escape(path) + r"(?=$|/|[^\w.-])"
        if name == ".":  # inside the repository: relative, without a leading "./"
            text = re.sub(pattern + "/", "", text)
        text = re.sub(pattern, name, text)
    return text


def portable(value, pairs):
    """A JSON-like value with every string rewritten by :func:`rewrite`."""
    if isinstance(value, str):
        return rewrite(value, pairs)
    if isinstance(value, list):
        return [portable(v, pairs) for v in value]
    if isinstance(value, tuple):
        return tuple(portable(v, pairs) for v in value)
    if isinstance(value, dict):
        return {portable(k, pairs): portable(v, pairs) for k, v in value.items()}
    return value


def data_fingerprint(data_dir, data_module):
    """What the data is: the data module and the SHA-256 of every file below ``data_dir`` (relative
    names), or only names and sizes for a folder over :data:`HASH_LIMIT` bytes."""
    out = {"data_module": data_module, "placeholder": "DATA"}
    if not data_dir or not Path(data_dir).is_dir():
        out["files"] = None
        return out
    root = Path(data_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    if total > HASH_LIMIT:
        out["files"] = {str(p.relative_to(root)): p.stat().st_size for p in files[:1000]}
        out["note"] = f"{len(files)} files, {total} bytes: sizes only (over {HASH_LIMIT} bytes)"
        return out
    out["files"] = {}
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out["files"][str(p.relative_to(root))] = h.hexdigest()
    return out


def _text(path):
    """A record file's text; one that is not UTF-8 or cannot be read is a UserError naming it."""
    from utils.safe_write import open_regular
    try:
        with open_regular(path) as f:
            return f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected the text a run writes") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None


def _json(path, pairs):
    """The file's text with the paths rewritten in place (its layout kept); still valid JSON."""
    text = _text(path)
    new = rewrite(text, pairs)
    try:
        json.loads(new)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: not valid JSON ({type(e).__name__})") from None
    return new


def _arrays(path):
    """Every array of a record's ``.npz`` (never unpickled; a torn file is a UserError naming it)."""
    from utils.npz_reader import open_npz
    with open_npz(path, "record file") as f:
        return {k: f.read(k) for k in f.files}


def _npz(path, pairs):
    import numpy as np
    arrays = _arrays(path)
    if "meta" not in arrays:
        return None
    meta = rewrite(str(arrays["meta"]), pairs)
    if meta == str(arrays["meta"]):
        return None
    arrays["meta"] = np.array(meta)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _checkpoint(path, pairs):
    import torch
    from utils.checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)
    ckpt.pop("checksum", None)
    new = {k: (portable(v, pairs) if not torch.is_tensor(v) and k != "state_dict" else v) for k, v in ckpt.items()}
    return None if new == ckpt else new


def files_of(folder):
    """The entries of a record folder, sorted; a missing folder is a UserError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"record folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}; "
                        "expected a folder bench/records/record.py wrote (results/NAME)")
    return sorted(folder.iterdir())


def plan(folder, pairs):
    """{file name: new contents} for every file of a record folder that holds a machine path."""
    changes = {}
    for path in files_of(folder):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            new = _json(path, pairs)
            if new != _text(path):
                changes[path.name] = new
        elif path.suffix in (".log", ".csv", ".txt", ".md"):
            old = _text(path)
            new = rewrite(old, pairs)
            if new != old:
                changes[path.name] = new
        elif path.suffix == ".npz":
            new = _npz(path, pairs)
            if new is not None:
                changes[path.name] = new
        elif path.suffix == ".pth":
            new = _checkpoint(path, pairs)
            if new is not None:
                changes[path.name] = new
    return changes


def apply(folder, changes):
    """Write ``changes`` (from :func:`plan`) atomically, each through the write rule (utils/safe_write.py)."""
    from utils.checkpoint import save_checkpoint
    from utils.safe_write import write_bytes, write_text
    for name, new in changes.items():
        target = Path(folder) / name
        if isinstance(new, dict):
            save_checkpoint(new, target)
        elif isinstance(new, bytes):
            write_bytes(target, new)
        else:
            write_text(target, new)


def machine_paths(folder):
    """Every absolute path left in a record's text files: [(file, path), ...]."""
    from utils.npz_reader import open_npz
    found = []
    for path in files_of(folder):
        if path.suffix in (".json", ".log", ".csv", ".txt"):
            found += [(path.name, m) for m in ABSOLUTE.findall(_text(path))]
        elif path.suffix == ".npz":
            with open_npz(path, "record file") as f:
                if "meta" in f.files:
                    found += [(path.name, m) for m in ABSOLUTE.findall(str(f.read("meta", limit=1 << 24)))]
        elif path.suffix == ".pth":
            from utils.checkpoint import load_checkpoint
            ckpt = load_checkpoint(path)
            text = json.dumps({k: v for k, v in ckpt.items() if k not in ("state_dict", "checksum")}, default=str)
            found += [(path.name, m) for m in ABSOLUTE.findall(text)]
    return found


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", help="record folders (results/NAME)")
    args = p.parse_args(argv)
    for folder in map(Path, args.records):  # a folder that is no record (empty, another folder) is not "clean"
        files_of(folder)
        if not (folder / "record.json").is_file():
            raise UserError(f"record folder {folder} holds no record.json; expected a folder bench/records/record.py "
                            "wrote (results/NAME)")
    left = [(folder, name, path) for folder in args.records for name, path in machine_paths(folder)]
    for folder, name, path in left:
        print(f"{Path(folder) / name}: machine path {path}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
