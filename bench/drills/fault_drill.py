"""Fault drill: kill a real training run with SIGKILL at random moments, resume it each time, and
check that it ends with the same weights as an uninterrupted run.

    python bench/drills/fault_drill.py [--config configs/config_digits_lt_tade.json] [--epochs 8] [--kills 5]
                                [--seed 0] [--workdir DIR]
                                [--drill kill|disk-full|concurrent-resume|overwrite|tools]

Trains through train.py (the real code path) on CPU with one thread (Digits-LT by default: no
download). First an uninterrupted run gives the reference and the timing. Then the drill run is
killed ``--kills`` times: at random moments of training progress (uniform over the run, e.g. 2.4
epochs = 40 % into epoch 3), one of them mid-save instead (as soon as a temporary checkpoint file
``.NAME.pth.tmpPID`` appears beside an existing last.pth, i.e. while last.pth is being replaced).
After each kill, last.pth must load with the safe loader; the run is resumed with ``-r last.pth``.
At the end it prints how many kills were survived and whether the final weights (and optimizer
state) equal the reference's bit for bit.

``--drill disk-full`` trains into a small tmpfs (it needs the right to mount one, e.g. root; it is
skipped with the reason otherwise): the disk fills while epoch 2 is saved (one-line error, exit 2,
last.pth keeps epoch 1 and loads, no temporary file), and at the start of a run (no folder left, the
same command can run again); once there is space, the run resumes to its end.
``--drill concurrent-resume`` resumes one run twice at once (``--lr 0.01`` and ``--lr 0.02``): the
second gets a one-line error and exit 2 while the first holds the folder; a holder killed with
SIGKILL does not leave the folder locked.
``--drill overwrite`` tries what a careless or hostile user might: a bench tool's default ``--out``
onto a record, its ``--out`` onto a checkpoint, a plot behind a link to another file, a leftover
folder holding a user's checkpoint, ``--run_id`` / ``--name`` leading out of save_dir, ``info.log`` a
link, a resume with nothing to train, and two ``test.py --save_logits`` onto one ``--out`` at once
(``--trials`` times). Each case prints its command, exit code, last line and the hashes of the files
that must not change.
``--drill tools`` gives the bench and record tools bad input (no training: copies of the shipped
record): ``portable_record.py`` on a torn or pickled npz, a truncated ``model.pth``, an ``info.log``
that is not UTF-8 or is a FIFO, a missing folder; ``test_time_methods.py --logits`` a torn file or a
FIFO; ``record.py --name ../escape`` and a 300-character name; ``report.py`` on records with
``epochs "thirty"``, ``Infinity``, ``-1e999``, a name with ``|``, no ``config.json``; ``test.py --bs 0``
and ``--draws 0``; ``speed.py`` without a subcommand and ``loader --workers -1``;
``calibration_study.py --sizes a,b``; ``dirmixe_formula.py`` on a malformed config; ``test_train.py
--logits`` a text file; ``record.py --epochs 0``; ``reproduce.py --methods zzz``; ``report.py`` on an
empty ``--results``; ``portable_record.py`` on an empty folder; ``fault_drill.py --trials 0``. Each
must exit 2 with one line, write nothing and wait on nothing (120 s).
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT

from utils.checkpoint import load_checkpoint
from utils.cli import ArgumentParser, absolute_paths, nonnegative_int, positive_int
from utils.errors import UserError, cli_entry
from utils.parse_config import read_json
from utils.safe_write import open_append

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def command(args, save_dir, run_id, resume=None, epochs=None):
    epochs = ["--epochs", str(epochs)] if epochs is not None else []
    if resume is not None:
        return [sys.executable, str(ROOT / "train.py"), "-r", str(resume), "-d", "cpu", *epochs]
    return [sys.executable, str(ROOT / "train.py"), "-c", str(args.config), "-d", "cpu", "--save_dir", str(save_dir),
            "--run_id", run_id, "--epochs", str(args.epochs), "--seed", str(args.train_seed),
            "--set", "trainer.tensorboard=false", *epochs]


def start(cmd, log):
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def temp_files(folder, suffix=""):
    try:
        return [e.name for e in os.scandir(folder) if e.name.startswith(".") and f"{suffix}.tmp" in e.name]
    except FileNotFoundError:
        return []


def checkpoint_epoch(path):
    """Epoch held by ``path`` (None if absent); raises UserError if it does not load."""
    if not path.exists():
        return None
    return int(load_checkpoint(path)["epoch"])


class Progress:
    """Epoch held by last.pth, re-read only when the file is replaced."""

    def __init__(self, path):
        self.path, self.key, self.epoch = path, None, 0

    def committed(self):
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return 0
        if (st.st_ino, st.st_mtime_ns) != self.key:
            self.key, self.epoch = (st.st_ino, st.st_mtime_ns), checkpoint_epoch(self.path)
        return self.epoch


def kill_at(proc, progress, target, startup_s, epoch_s):
    """SIGKILL at ``target`` epochs of progress (2.4 = 40 % into epoch 3): once last.pth holds
    epoch floor(target), wait the fraction of an epoch (plus start-up if the process has only just
    started on it). Returns True if killed, False if the process ended first."""
    whole, fraction = int(target), target - int(target)
    t_start = time.monotonic()
    while progress.committed() < whole:
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    delay = fraction * epoch_s + (startup_s if time.monotonic() - t_start < startup_s else 0.0)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def kill_mid_save(proc, run_dir, ignore=()):
    """SIGKILL as soon as a new temporary checkpoint file exists while a previous last.pth exists
    (so the kill lands while a checkpoint is being replaced); returns the temporary files' names
    (None: the run ended first)."""
    while proc.poll() is None:
        names = [n for n in temp_files(run_dir, ".pth") if n not in ignore]
        if names and (run_dir / "last.pth").exists():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return names
    return None


def run(cmd, log=None, timeout=None):
    """Run to the end; (exit code, stderr lines). A command still running after ``timeout`` seconds
    (waiting on a FIFO) is killed: exit 124 and a line saying so."""
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=log or subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, [f"still running after {timeout} s (waiting on something): killed"]
    return proc.returncode, proc.stderr.strip().splitlines()


def one_line(code, lines):
    return f"exit {code}, {len(lines)} stderr line(s): {lines[-1] if lines else ''}"


def mount_tmpfs(folder, size):
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"mount exit {proc.returncode}")


def disk_full_drill(args, work, log):
    """The disk fills while a checkpoint is saved, then at the start of a run."""
    probe = work / "probe"
    code, lines = run(command(args, probe, "size", epochs=1), log)
    if code:
        sys.exit(f"probe run failed: {one_line(code, lines)}")
    size = next(probe.glob("*/size/last.pth")).stat().st_size
    disk = work / "disk"
    reason = mount_tmpfs(disk, 5 * size // 2)  # room for last.pth and model_best.pth, not for a third file
    if reason:
        print(f"disk-full drill skipped: cannot mount a tmpfs here ({reason}); it needs root or CAP_SYS_ADMIN")
        return True
    ok = True
    try:
        print(f"disk-full drill: tmpfs of {5 * size // 2 / 1e6:.1f} MB, checkpoints of {size / 1e6:.1f} MB", flush=True)
        code, lines = run(command(args, disk, "full", epochs=3), log)
        last = next(disk.glob("*/full/last.pth"))
        held, left = checkpoint_epoch(last), temp_files(last.parent)
        good = code == 2 and len(lines) == 1 and "No space left" in lines[0] and held == 1 and not left
        ok &= good
        print(f"  full during the save of epoch 2: {one_line(code, lines)}; last.pth holds epoch {held}, loads; "
              f"temporary files left: {len(left)} -> {'ok' if good else 'FAILED'}", flush=True)
        subprocess.run(["mount", "-o", f"remount,size={8 * size}", str(disk)], check=True)
        code, lines = run(command(args, disk, "full", epochs=3, resume=last), log)
        good = code == 0 and checkpoint_epoch(last) == 3
        ok &= good
        print(f"  space freed, resumed: exit {code}{', ' + lines[-1] if code and lines else ''}, last.pth holds "
              f"epoch {checkpoint_epoch(last)} -> {'ok' if good else 'FAILED'}", flush=True)
        subprocess.run(["umount", str(disk)], check=True)
        mount_tmpfs(disk, "4k")  # a disk full from the start: config.json cannot be written
        for attempt in (1, 2):
            code, lines = run(command(args, disk, "start", epochs=1), log)
            folders = list(disk.glob("*/start"))
            good = code == 2 and len(lines) == 1 and "No space left" in lines[0] and not folders
            ok &= good
            print(f"  full at the start, attempt {attempt}: {one_line(code, lines)}; run folder left: "
                  f"{'yes' if folders else 'no'} -> {'ok' if good else 'FAILED'}", flush=True)
    finally:
        subprocess.run(["umount", str(disk)])
    return ok


def concurrent_resume_drill(args, work, log):
    """Two resumes of one run at once; then a lock holder killed with SIGKILL."""
    save_dir = work / "saved"
    code, lines = run(command(args, save_dir, "shared", epochs=1), log)
    if code:
        sys.exit(f"first run failed: {one_line(code, lines)}")
    last = next(save_dir.glob("*/shared/last.pth"))
    lock = last.parent / ".lock"
    resume = command(args, save_dir, "shared", epochs=args.epochs, resume=last)
    first = start(resume + ["--lr", "0.01"], log)
    while not lock.exists() and first.poll() is None:
        time.sleep(0.01)
    code, lines = run(resume + ["--lr", "0.02"], log)
    first_code = first.wait()
    config_lr = json.loads((last.parent / "config.json").read_text())["optimizer"]["args"]["lr"]
    ckpt_lr = load_checkpoint(last)["config"]["optimizer"]["args"]["lr"]
    ok = code == 2 and len(lines) == 1 and "in use" in lines[0] and first_code == 0 and config_lr == ckpt_lr == 0.01
    print(f"concurrent resume: second ({one_line(code, lines)}); first exit {first_code}; config.json lr {config_lr}, "
          f"last.pth lr {ckpt_lr} -> {'ok' if ok else 'FAILED'}", flush=True)
    holder = start(resume + ["--epochs", str(args.epochs + 2)], log)
    while not lock.exists() and holder.poll() is None:
        time.sleep(0.01)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    code, lines = run(resume + ["--epochs", str(args.epochs + 1)], log)
    good = code == 0 and checkpoint_epoch(last) == args.epochs + 1
    ok &= good
    print(f"lock holder killed with SIGKILL: next resume exit {code}, last.pth holds epoch {checkpoint_epoch(last)} "
          f"-> {'ok' if good else 'FAILED'}", flush=True)
    return ok


# -- the overwrite drill: files a user has are never overwritten or deleted ----------------------------------
def sha(path):
    """Short SHA-256 of a file (None: absent); a folder: of its sorted file names and contents."""
    import hashlib
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
        return h.hexdigest()[:12]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def tool(script, *args):
    return [sys.executable, str(ROOT / script), *map(str, args)]


def overwrite_case(name, cmd, protected, expect_code=2, log=None, check=None, timeout=None):
    """Run ``cmd``; the case holds when it exits ``expect_code`` (with one stderr line, when that is
    2) and every ``protected`` file has the same hash after as before (and ``check()`` holds, when
    given). Prints command, exit code, last line, hashes."""
    before = {str(p): sha(p) for p in protected}
    code, lines = run(cmd, log, timeout)
    after = {str(p): sha(p) for p in protected}
    extra = check() if check is not None else True
    ok = code == expect_code and before == after and extra and (code != 2 or len(lines) == 1)
    last = lines[-1] if lines else ""
    hashes = ", ".join(f"{Path(p).name} {before[p]}{'' if before[p] == after[p] else ' -> ' + str(after[p])}"
                       for p in before)
    shown_cmd = " ".join(Path(c).name if i < 2 else str(c) if len(str(c)) < 80 else f"{str(c)[:20]}...({len(str(c))})"
                         for i, c in enumerate(cmd))
    print(f"{name}: $ {shown_cmd}\n"
          f"    exit {code}, {len(lines)} stderr line(s): {last[:300]}\n    hashes: {hashes} -> "
          f"{'ok' if ok else 'FAILED'}", flush=True)
    return ok


def concurrent_logits(run_dir, out, trials, log):
    """Two ``test.py --save_logits --out OUT`` at once, ``trials`` times: the logits file must load every time."""
    import numpy as np
    good = 0
    for _ in range(trials):
        procs = [start(tool("test.py", "-r", run_dir / "last.pth", "-d", "cpu", "--save_logits", "--out", out), log)
                 for _ in range(2)]
        codes = [p.wait() for p in procs]
        try:
            with np.load(out.with_name(out.stem + "_logits.npz")) as f:
                f["test_logits"].sum()
            loads = True
        except Exception:  # noqa: BLE001 - any failure to read is the drill's finding
            loads = False
        good += loads and codes == [0, 0]
    leftovers = temp_files(out.parent)
    ok = good == trials and not leftovers
    print(f"concurrent test.py --save_logits --out same.json: {good}/{trials} trials both exit 0 and the logits file "
          f"loads; temporary files left: {len(leftovers)} -> {'ok' if ok else 'FAILED'}", flush=True)
    return ok


def overwrite_drill(args, work, log):
    """The cases of a careless or hostile user: a record, a checkpoint, a file behind a link, a user's
    checkpoint in a leftover folder, a folder outside save_dir, a concurrent write, a resume with
    nothing to train."""
    save_dir = work / "saved"
    code, lines = run(command(args, save_dir, "run", epochs=1), log)
    if code:
        sys.exit(f"first run failed: {one_line(code, lines)}")
    run_dir = next(save_dir.glob("*/run"))
    name = run_dir.parent.name
    last = run_dir / "last.pth"
    code, lines = run(tool("test.py", "-r", last, "-d", "cpu", "--save_logits", "--out", work / "eval.json"), log)
    if code:
        sys.exit(f"test.py failed: {one_line(code, lines)}")
    # a record as bench/records/record.py leaves it
    record = work / "results" / "rec"
    record.mkdir(parents=True)
    shutil.copyfile(work / "eval_logits.npz", record / "logits.npz")
    (record / "test_time_methods.json").write_text('{"protocols": {}, "validation_info": null}\n')
    (record / "record.json").write_text('{"name": "rec"}\n')
    outside = work / "outside.txt"
    outside.write_text("a file of the user's\n")
    ok = True
    ok &= overwrite_case("record: test_time_methods.py --logits RECORD/logits.npz (default --out)",
                         tool("bench/studies/test_time_methods.py", "--logits", record / "logits.npz",
                              "--stream_batch", "64"),
                         [record / "test_time_methods.json", record / "logits.npz"], log=log)
    ok &= overwrite_case("checkpoint: test_time_methods.py --out RUN/last.pth",
                         tool("bench/studies/test_time_methods.py", "--logits", work / "eval_logits.npz",
                              "--stream_batch", "64", "--out", last), [last], log=log)
    linked = save_dir / name / "linked"
    shutil.copytree(run_dir, linked)
    (linked / "eval_last_reliability.png").symlink_to(outside)
    ok &= overwrite_case("side file behind a link: test.py -r RUN/last.pth, RUN/eval_last_reliability.png -> OUTSIDE",
                         tool("test.py", "-r", linked / "last.pth", "-d", "cpu"), [outside], log=log)
    leftover = save_dir / name / "leftover"
    leftover.mkdir()
    shutil.copyfile(run_dir / "config.json", leftover / "config.json")
    (leftover / "info.log").write_text("10:00:00 started\n")
    shutil.copyfile(last, leftover / "model_best.pth")
    ok &= overwrite_case("takeover: train.py --run_id F, F holds a failed start's files and a user's model_best.pth",
                         command(args, save_dir, "leftover", epochs=1), [leftover / "model_best.pth", leftover],
                         log=log)
    victim = work / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me\n")
    ok &= overwrite_case("outside save_dir: train.py --epochs 0 --run_id ../../victim",
                         command(args, save_dir, "../../victim", epochs=0), [victim], log=log)
    ok &= overwrite_case("outside save_dir: train.py --name ../.. --run_id victim",
                         command(args, save_dir, "victim", epochs=0) + ["--name", "../.."], [victim], log=log)
    (run_dir / "info.log").rename(run_dir / "info.log.own")
    (run_dir / "info.log").symlink_to(outside)
    ok &= overwrite_case("info.log a link: train.py -r RUN/last.pth --epochs 2, RUN/info.log -> OUTSIDE",
                         command(args, save_dir, "run", epochs=2, resume=last), [outside, last], log=log)
    (run_dir / "info.log").unlink()
    (run_dir / "info.log.own").rename(run_dir / "info.log")
    ok &= overwrite_case("resume with nothing to train: train.py -r RUN/last.pth --epochs 1",
                         command(args, save_dir, "run", epochs=1, resume=last),
                         [run_dir / "config.json", run_dir / "info.log", last], expect_code=0, log=log)
    ok &= concurrent_logits(run_dir, work / "same.json", args.trials, log)
    return ok


# -- the tools drill: the bench and record tools answer bad input as the entry points do ------------------------
def _record_copy(work, name, files=("record.json", "config.json", "eval_last.json", "test_time_methods.json",
                                     "epochs.csv")):
    """A copy of the files of the shipped TADE record that report.py reads (records are read-only)."""
    source = next((ROOT / "results").glob("*_tade_*"))
    folder = work / name / source.name
    folder.mkdir(parents=True)
    for f in files:
        shutil.copyfile(source / f, folder / f)
    return source, folder


def _edited(folder, old, new):
    path = folder / "record.json"
    path.write_text(path.read_text().replace(old, new, 1))


def tools_drill(args, work, log):
    """Bad input to the bench and record tools: a torn, pickled or special file, a missing folder, an
    escaping name, record fields that are not finite or not of their type. Each must exit 2 with one
    line, write nothing and wait on nothing."""
    import numpy as np
    work = Path(tempfile.mkdtemp(prefix="tools_", dir=work))  # a fresh folder each time, whatever --workdir holds
    source, damaged = _record_copy(work, "parts")
    (damaged / "logits.npz").write_bytes((source / "logits.npz").read_bytes()[:4000])
    pickled = work / "pickled"
    pickled.mkdir()
    np.savez(pickled / "logits.npz", meta=np.array([{"a": 1}], dtype=object))  # an object array: never unpickled
    (damaged / "model.pth").write_bytes((source / "model.pth").read_bytes()[:50_000])
    odd = work / "odd"
    odd.mkdir()
    (odd / "info.log").write_bytes(b"run folder \xff\xfe\n")
    special = work / "special"
    special.mkdir()
    os.mkfifo(special / "info.log")
    os.mkfifo(work / "fifo.npz")
    out = work / "out.json"
    cases = [("portable_record.py on a torn logits.npz and a truncated model.pth",
              tool("bench/records/portable_record.py", damaged)),
             ("portable_record.py on a pickled npz", tool("bench/records/portable_record.py", pickled)),
             ("portable_record.py on an info.log that is not UTF-8", tool("bench/records/portable_record.py", odd)),
             ("portable_record.py on an info.log that is a FIFO", tool("bench/records/portable_record.py", special)),
             ("portable_record.py on a missing folder", tool("bench/records/portable_record.py", work / "nowhere")),
             ("test_time_methods.py --logits a torn file",
              tool("bench/studies/test_time_methods.py", "--logits", damaged / "logits.npz", "--out", out)),
             ("test_time_methods.py --logits a FIFO",
              tool("bench/studies/test_time_methods.py", "--logits", work / "fifo.npz", "--out", out))]
    for name in ("../escape", "x" * 300):
        cases.append((f"record.py --name {name[:12]}{'...' if len(name) > 12 else ''}",
                      tool("bench/records/record.py", "-c", args.config, "--epochs", 1, "--seed", 1, "--name", name,
                           "--work_dir", work / "record_work", "--results_dir", work / "record_results")))
    for label, edit in (("epochs \"thirty\"", lambda f: _edited(f, '"epochs": 30', '"epochs": "thirty"')),
                        ("training_seconds Infinity", lambda f: _edited(f, '"training_seconds": ',
                                                                        '"training_seconds": Infinity, "x": ')),
                        ("epochs -1e999", lambda f: _edited(f, '"epochs": 30', '"epochs": -1e999')),
                        ("a name with |", lambda f: _edited(f, f'"name": "{source.name}"', '"name": "a|b"')),
                        ("no config.json", lambda f: (f / "config.json").unlink())):
        results = work / f"report_{len(cases)}"
        edit(_record_copy(results, "results")[1])
        cases.append((f"report.py on a record with {label}",
                      tool("bench/records/report.py", "--results", results / "results", "--doc", results / "page.md")))
    cases += [("test.py --bs 0", tool("test.py", "-r", work / "no.pth", "--bs", 0)),
              ("test.py --protocol dirmixe --draws 0", tool("test.py", "-r", work / "no.pth", "--protocol", "dirmixe",
                                                            "--draws", 0))]
    empty = work / "empty"  # a folder that holds nothing: no record, no records
    empty.mkdir()
    (work / "text.npz").write_text("not an archive\n")
    (work / "bad.json").write_text("{bad")
    cases += [("speed.py without a subcommand", tool("bench/speed/speed.py")),
              ("speed.py loader --workers -1", tool("bench/speed/speed.py", "loader", "--workers", -1)),
              ("calibration_study.py --sizes a,b", tool("bench/studies/calibration_study.py", "--sizes", "a,b",
                                                        "--out", out)),
              ("dirmixe_formula.py -c a malformed config", tool("bench/studies/dirmixe_formula.py", "-c",
                                                                work / "bad.json")),
              ("test_train.py --logits a text file",
               tool("test_train.py", "-c", ROOT / "configs" / "test_time_cifar10_prior.json", "--logits",
                    work / "text.npz", "--out", out)),
              ("record.py --epochs 0", tool("bench/records/record.py", "-c", args.config, "--epochs", 0, "--seed", 1,
                                            "--work_dir", work / "record_work", "--results_dir",
                                            work / "record_results")),
              ("reproduce.py --methods zzz", tool("bench/records/reproduce.py", "--dataset", "digits_lt", "--methods",
                                                  "zzz", "--epochs", 1, "--out_dir", work / "record_results")),
              ("report.py on an empty --results", tool("bench/records/report.py", "--results", empty, "--doc",
                                                       work / "report_empty" / "page.md")),
              ("portable_record.py on an empty folder", tool("bench/records/portable_record.py", empty)),
              ("fault_drill.py --trials 0", tool("bench/drills/fault_drill.py", "--drill", "overwrite", "--trials", 0))]
    ok = True
    for name, cmd in cases:
        ok &= overwrite_case(name, cmd, [damaged, odd, pickled], log=log, timeout=120,
                             check=lambda: not out.exists() and not any(work.glob("report_*/page.md"))
                             and not (work / "record_results").exists() and not any(empty.iterdir()))
    return ok


def same_state(a_path, b_path):
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    weights = a["state_dict"].keys() == b["state_dict"].keys() and all(
        torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    optimizer = sa.keys() == sb.keys() and all(
        torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)
    return weights, optimizer, len(a["state_dict"]), a["epoch"], b["epoch"]


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "config_digits_lt_tade.json"))
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument("--kills", type=nonnegative_int, default=5)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the kill moments")
    p.add_argument("--train_seed", type=nonnegative_int, default=1)
    p.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--drill", default="kill", choices=("kill", "disk-full", "concurrent-resume", "overwrite", "tools"))
    p.add_argument("--trials", type=positive_int, default=5, help="overwrite drill: trials of two concurrent test.py")
    args = p.parse_args(argv)
    absolute_paths(args, "config", "workdir")  # the runs start from the project root
    read_json(args.config)  # missing or malformed: one line, before any run
    if args.workdir is not None:
        if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
            raise UserError(f"--workdir {args.workdir} is not a folder; expected a folder to keep the runs in")
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fault_drill_"))
    work.mkdir(parents=True, exist_ok=True)
    save_dir = work / "saved"
    log = open_append(work / "drill.log")  # never through a link (utils/safe_write.py)
    if args.drill != "kill":
        drill = {"disk-full": disk_full_drill, "concurrent-resume": concurrent_resume_drill,
                 "overwrite": overwrite_drill, "tools": tools_drill}[args.drill]
        print(f"{args.drill} drill: {Path(args.config).name}, CPU, 1 thread; runs in {work}", flush=True)
        sys.exit(0 if drill(args, work, log) else 1)
    print(f"fault drill: {Path(args.config).name}, {args.epochs} epochs, train seed {args.train_seed}, "
          f"kill seed {args.seed}, CPU, 1 thread; runs in {work}", flush=True)

    # Reference: uninterrupted, timed (start-up + first epoch, then per epoch).
    t0 = time.monotonic()
    proc = start(command(args, save_dir, "reference"), log)
    name = None
    while proc.poll() is None and name is None:
        found = list(save_dir.glob("*/reference/last.pth"))
        name = found[0].parent.parent.name if found else None
        time.sleep(0.01)
    t_first = time.monotonic() - t0
    if proc.wait():
        sys.exit(f"reference run failed, see {work / 'drill.log'}")
    t_total = time.monotonic() - t0
    reference = save_dir / name / "reference"
    epoch_s = (t_total - t_first) / max(args.epochs - 1, 1)
    startup_s = max(t_first - epoch_s, 0.0)
    print(f"uninterrupted run: {args.epochs} epochs in {t_total:.1f} s (start-up ~{startup_s:.1f} s, "
          f"~{epoch_s:.1f} s per epoch)", flush=True)

    run = save_dir / name / "drill"
    last = run / "last.pth"
    # Kill moments as points of training progress, spread over the whole run.
    targets = sorted(rng.uniform(0.05, args.epochs - 0.1) for _ in range(args.kills))
    kinds = ["random"] * (args.kills - 1) + ["mid-save"] if args.kills else []
    rng.shuffle(kinds)
    survived = 0
    progress = Progress(last)
    for i, (kind, target) in enumerate(zip(kinds, targets), 1):
        before = checkpoint_epoch(last)
        note = ""
        if before is None and run.exists():  # killed before any epoch was saved: start over
            shutil.rmtree(run)
            note = " (no epoch saved yet: started over)"
        cmd = command(args, save_dir, "drill", resume=None if before is None else last)
        stale = set(temp_files(run))
        t_start = time.monotonic()
        proc = start(cmd, log)
        if kind == "mid-save":
            names = kill_mid_save(proc, run, ignore=stale)
            what = f"mid-save ({', '.join(names)} present)" if names else "mid-save missed (run ended)"
            killed = names is not None
        else:
            killed = kill_at(proc, progress, target, startup_s, epoch_s)
            elapsed = time.monotonic() - t_start
            what = (f"aimed at {target:.2f} epochs of progress, {elapsed:.1f} s after start" if killed
                    else f"planned at {target:.2f} epochs, but the run ended first")
        try:
            after = checkpoint_epoch(last)
            ok = before is None or (after is not None and after >= before)
            state = f"last.pth holds epoch {after}, loads" if after is not None else "no last.pth yet"
        except UserError as e:
            ok, state = False, f"last.pth BROKEN: {e}"
        left = temp_files(run)
        survived += ok and killed
        print(f"kill {i}/{len(kinds)}: {'resumed from epoch ' + str(before) if before else 'fresh start'}{note}, "
              f"SIGKILL {what}; {state}{'; temporary file left: ' + ', '.join(left) if left else ''}", flush=True)
        if not ok:
            break

    if checkpoint_epoch(last) is None and run.exists():
        shutil.rmtree(run)
    proc = start(command(args, save_dir, "drill", resume=last if last.exists() else None), log)
    if proc.wait():
        sys.exit(f"final resume failed, see {work / 'drill.log'}")
    leftovers = temp_files(run)
    weights, optimizer, n, ea, eb = same_state(reference / "last.pth", last)
    print(f"survived {survived}/{len(kinds)} kills; final epoch {eb} (reference {ea}); temporary files left: "
          f"{len(leftovers)}")
    print(f"final weights equal the uninterrupted run's: {'yes' if weights else 'NO'} (bit for bit, {n} tensors); "
          f"optimizer state equal: {'yes' if optimizer else 'NO'}")
    if not (weights and optimizer and survived == len(kinds) and eb == ea and not leftovers):
        sys.exit(1)


if __name__ == "__main__":
    main()
