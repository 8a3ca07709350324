"""Give a record made without views (``record.py --skip_views``) the view logits it lacks and the
test-time rows they make possible (self-supervised aggregation), as new files beside its own,
which stay as they are (bench/records/addendum.py).

    python bench/records/add_views.py results/NAME [--data_dir DATA] [-d DEVICE] [--work_dir DIR]

1. ``test.py --save_logits --save_views`` (5 epochs of views, float16, as record.py) on a copy of
   the record's ``model.pth``, at the record's precision, in a temporary folder under
   ``--work_dir`` (outside the repository; removed at the end, kept with its log when a step fails);
2. the clean test logits it computes must be the record's ``logits.npz`` ones within rounding
   (:data:`ULPS` steps of float16, or of bf16 for a record evaluated in bf16, of max(|logit|, 1)):
   otherwise the model or the data differ, and nothing is added;
3. ``bench/studies/test_time_methods.py --logits RECORD/logits.npz --views views.npz --views_only``:
   the rows of the methods that need views, on the record's own clean logits;
4. the record gains ``views.npz`` (the view logits), ``test_time_methods_views.json`` (those
   rows) and ``addendum.json`` (the files with their SHA-256; the command with ``DATA`` and
   ``WORK_DIR`` placeholders, as record.json; the commit that made them and whether the tree had
   uncommitted changes; the machine, precision and date; the clean-logit check).
   bench/records/report.py shows the rows in the record's tables, marked as added later.

Refused with one line (exit 2), before any work: a folder that is not a record, a record without
``model.pth``, one whose ``logits.npz`` holds views already, that has an addendum, or whose
``test_time_methods.json`` has the rows already, and a file the record would gain that exists. The
files are assembled in a folder beside the record and linked into it together at the end
(``utils.safe_write.add_files``): an interrupted or refused run leaves the record as it was.
"""
import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT

from bench.records.addendum import ADDENDUM, ROWS, VIEWS, WRITER
from bench.records.portable_record import apply, places, plan, portable
from bench.records.record import DEFAULT_WORK_DIR, VIEW_EPOCHS, git_state, machine
from bench.records.steps import command, run_step
from utils.cli import ArgumentParser, absolute_paths
from utils.errors import UserError, cli_entry
from utils.safe_write import add_files, digest, write_bytes, write_json

ULPS = 4  # a recomputed clean logit may differ from the record's by this many steps of its storage
STEP = {"bf16": 2.0 ** -7}  # relative step of the evaluation's precision where coarser than float16's 2**-10
AUTOCAST = {"fp32": None, "bf16": "bf16", "fp16": "fp16"}  # record.json's precision -> trainer.autocast
REQUIRED = ("record.json", "config.json", "logits.npz", "test_time_methods.json")


def view_labels(logits):
    """The labels of the test-time methods that need view logits (self-supervised aggregation)."""
    from bench.studies.test_time_methods import method_list
    return [label for label, method in method_list(logits.data.type_name, logits.net.num_experts, skip_views=False)
            if method.needs_views]


def check_record(folder):
    """Before any work: ``folder`` is a record without views and without an addendum, holding its
    weights, and lacking the rows views make possible. Returns (record.json, its logits, the labels)."""
    from trainer.saved_logits import load_logits
    from utils.npz_reader import open_npz
    from utils.parse_config import read_json
    if not (folder / "record.json").is_file():
        raise UserError(f"{folder}: no record.json; expected a record folder bench/records/record.py wrote "
                        "(results/NAME)")
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise UserError(f"{folder}: no {name}; expected the files bench/records/record.py writes")
    if not (folder / "model.pth").is_file():
        raise UserError(f"{folder}: no model.pth (the record keeps no weights); the view logits need the network")
    for name in (ADDENDUM, VIEWS, ROWS):
        if (folder / name).exists() or (folder / name).is_symlink():
            raise UserError(f"{folder / name} exists: views were added to this record already (or the name is "
                            "taken), and a record's files are never overwritten")
    with open_npz(folder / "logits.npz", "record file") as f:
        if "view_logits" in f.files:
            raise UserError(f"{folder / 'logits.npz'} holds view logits already (recorded without --skip_views); "
                            "nothing to add")
    logits = load_logits(folder / "logits.npz")
    labels = view_labels(logits)
    if not labels:
        raise UserError(f"{folder}: a model of {logits.net.num_experts} expert has no self-supervised aggregation "
                        "to add (nothing to aggregate); nothing to add")
    protocols = read_json(folder / "test_time_methods.json").get("protocols")
    have = protocols.get("distributions") if isinstance(protocols, dict) else None
    if not isinstance(have, dict):
        raise UserError(f"{folder / 'test_time_methods.json'}: no 'protocols' -> 'distributions'; expected the rows "
                        "bench/studies/test_time_methods.py writes")
    if any(label in have for label in labels):
        raise UserError(f"{folder / 'test_time_methods.json'} has the rows views make possible already "
                        f"({', '.join(repr(label) for label in labels if label in have)}); nothing to add")
    return read_json(folder / "record.json"), logits, labels


def compare_clean(folder, record, computed, precision):
    """The check of step 2: {"images", "max_abs_difference", "tolerance", "same_top1"}, or a UserError
    saying how the recomputed clean test logits differ from the record's."""
    (a, targets), (b, new_targets) = record.splits["test"], computed.splits["test"]
    if a.shape != b.shape or not np.array_equal(targets.numpy(), new_targets.numpy()):
        raise UserError(f"{folder / 'logits.npz'}: the test set recomputed from model.pth (logits {tuple(b.shape)}) "
                        f"is not the record's (logits {tuple(a.shape)}, the same labels in the same order): other "
                        "data; check --data_dir. Nothing was added")
    a, b = a.numpy(), b.numpy()
    step = max(STEP.get(precision, 2.0 ** -10), 2.0 ** -10)
    tolerance = ULPS * step * np.maximum(np.abs(a), 1.0)
    diff = np.abs(a - b)
    if (diff > tolerance).any():
        i, e, c = np.unravel_index(np.argmax(diff / tolerance), diff.shape)
        raise UserError(f"{folder / 'logits.npz'}: the clean test logits recomputed from model.pth differ from the "
                        f"record's (image {i}, expert {e}, class {c}: {b[i, e, c]:.4f} against {a[i, e, c]:.4f}; "
                        f"{int((diff > tolerance).sum())} logits beyond {ULPS} steps of {step:g}): another model or "
                        "other data (check --data_dir). Nothing was added")
    return {"images": int(a.shape[0]), "max_abs_difference": float(diff.max()),
            "tolerance": f"{ULPS} x {step:g} x max(|logit|, 1)",
            "same_top1": float((a.mean(1).argmax(1) == b.mean(1).argmax(1)).mean())}


def new_rows(run, labels):
    """{protocol: {label: row}} of the rows of ``labels`` in a test_time_methods.py report."""
    rows = {protocol: {label: entries[label] for label in labels if label in entries}
            for protocol, entries in run["protocols"].items()}
    return {protocol: found for protocol, found in rows.items() if found}


def parse_args(argv):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("record", help="the record folder (results/NAME)")
    p.add_argument("--data_dir", help="the record's data (its record.json describes it)")
    p.add_argument("-d", "--device")
    p.add_argument("--work_dir", default=str(DEFAULT_WORK_DIR),
                   help="where test.py runs, in a temporary folder (outside the repository)")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    from trainer.saved_logits import load_logits, save_views
    from utils.checkpoint import config_from_checkpoint, load_checkpoint
    from utils.npz_reader import open_npz
    from utils.runtime import parse_device
    args = parse_args(argv)
    started = time.time()
    absolute_paths(args, "data_dir", "record", "work_dir")  # the steps run from the project root
    folder = Path(args.record)
    device = str(parse_device(args.device)[0])  # what test.py will run on (an unknown device: one line, now)
    rec, logits, labels = check_record(folder)
    config = config_from_checkpoint(load_checkpoint(folder / "model.pth"))
    if config is None:
        raise UserError(f"{folder / 'model.pth'}: holds no config; expected the weights record.py keeps")
    if config.get("data_loader", {}).get("args", {}).get("data_dir") == "DATA" and not args.data_dir:
        raise UserError(f"{folder}: the record reads its data from a folder (DATA in its config); give --data_dir")
    precision = rec.get("precision")
    if precision in AUTOCAST:  # the record's precision, whatever this machine's "auto" would choose
        config.setdefault("trainer", {})["autocast"] = AUTOCAST[precision]
    work_dir = Path(args.work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{folder.name}.add_views.", dir=work_dir))
    except OSError as e:
        raise UserError(f"--work_dir {args.work_dir}: cannot make a work folder there ({e.strerror}); expected a "
                        "writable folder") from None
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.addendum.", suffix=".partial", dir=folder.parent))
    except OSError as e:
        shutil.rmtree(work)
        raise UserError(f"{folder.parent}: cannot assemble the addendum beside the record ({e.strerror})") from None
    keep_work = False
    try:
        write_bytes(work / "model.pth", (folder / "model.pth").read_bytes())  # caches are written beside it
        write_json(work / "config.json", config)
        log = work / "add_views.log"
        run_step(command("test.py", "-r", work / "model.pth", "-c", work / "config.json", "--out", work / "eval.json",
                         "--save_logits", "--logits_dtype", "float16", "--save_views", "--view_epochs", VIEW_EPOCHS,
                         device=args.device, data_dir=args.data_dir), log, "add_views")
        check = compare_clean(folder, logits, load_logits(work / "eval_logits.npz"), precision)
        with open_npz(work / "eval_logits.npz", "logits file") as f:
            arrays = {k: f.read(k) for k in f.files}
        meta = {"written_by": WRITER, "record": folder.name, "checkpoint": "model.pth",
                "checkpoint_epoch": json.loads(str(arrays["meta"])).get("checkpoint_epoch"),
                "data_loader": logits.data.type_name, "num_experts": logits.net.num_experts, "precision": precision}
        save_views(stage / VIEWS, arrays, meta)
        run_step(command("bench/studies/test_time_methods.py", "--logits", folder / "logits.npz", "--views",
                         stage / VIEWS, "--views_only", "--out", work / "test_time_methods.json"), log, "add_views")
        run = json.loads((work / "test_time_methods.json").read_text())
        rows = new_rows(run, labels)
        if not rows:
            raise UserError(f"{work / 'test_time_methods.json'}: none of the rows views make possible "
                            f"({', '.join(labels)}); nothing was added")
        write_json(stage / ROWS, {"written_by": WRITER, "logits": "logits.npz", "views": VIEWS,
                                  "validation_info": run.get("validation_info"), "protocols": rows}, indent=1)
        results_dir = folder.resolve().parent
        results = str(results_dir.relative_to(ROOT)) if results_dir.is_relative_to(ROOT) else "RESULTS_DIR"
        pairs = [(str(results_dir), results), *places(args.data_dir, work_dir, ROOT)]
        apply(stage, plan(stage, pairs))  # no machine paths (bench/records/portable_record.py)
        in_record = f"{results}/{folder.name}"
        commit, dirty = git_state()
        addendum = {
            "written_by": WRITER, "record": folder.name,
            "files": {name: {"sha256": digest(stage / name), "bytes": (stage / name).stat().st_size}
                      for name in (VIEWS, ROWS)},
            "rows": {protocol: list(found) for protocol, found in rows.items()},
            "views": {"epochs": VIEW_EPOCHS, "shape": list(arrays["view_logits"].shape),
                      "dtype": str(arrays["view_logits"].dtype), "made_with": json.loads(str(arrays["views_meta"]))},
            "clean_logits_check": check,
            "command": portable([Path(sys.executable).name, WRITER, *(sys.argv[1:] if argv is None else argv)],
                                pairs),
            "rows_command": ["python", "bench/studies/test_time_methods.py", "--logits", f"{in_record}/logits.npz",
                             "--views", f"{in_record}/{VIEWS}", "--views_only", "--out", "OUT.json"],
            "commit": commit, "uncommitted_changes": dirty, "machine": machine(), "precision": precision,
            "device": device, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": time.time() - started,
        }
        write_json(stage / ADDENDUM, portable(addendum, pairs), indent=1)
        add_files(folder, [stage / VIEWS, stage / ROWS, stage / ADDENDUM])  # all or none; the addendum last
    except SystemExit:  # a step failed: its log stays
        keep_work = True
        raise
    finally:
        shutil.rmtree(stage)  # ours; the record holds its own links to the files it gained
        if not keep_work:
            shutil.rmtree(work)
    size = (folder / VIEWS).stat().st_size
    print(f"added to {folder}: {VIEWS} ({size / 1e6:.1f} MB), {ROWS} ({', '.join(labels)}), {ADDENDUM} "
          f"(commit {commit[:10]}{', uncommitted changes' if dirty else ''})")


if __name__ == "__main__":
    main()
