"""Shared benchmark set-up: real CIFAR-10 (written on demand) and a model from a config or checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT / ".cache" / "cifar"

# Where each tool went when bench/ was laid out by job (records/, studies/, speed/, drills/) and
# when tools were merged: a record's ``command`` names the path of its day, and results/ is never
# rewritten. The validation-size sweep is calibration_study.py's --training_images study, which
# takes record folders (RECORD_DIR) where the sweep took a checkpoint.
MOVED = {
    **{f"bench/{n}.py": f"bench/records/{n}.py" for n in ("record", "report", "portable_record", "reproduce")},
    **{f"bench/{n}.py": f"bench/studies/{n}.py" for n in ("calibration_study", "test_time_methods",
                                                          "jpeg_sensitivity", "dirmixe_formula", "own_data_demo")},
    **dict.fromkeys(("bench/validation_size.py", "bench/studies/validation_size.py"),
                    "bench/studies/calibration_study.py --training_images"),
    "bench/fault_drill.py": "bench/drills/fault_drill.py",
    "bench/speed.py": "bench/speed/speed.py",
    "bench/label_shift_speed.py": "bench/speed/speed.py label-shift",
    "bench/predict_speed.py": "bench/speed/speed.py predict",
}


def current_command(command):
    """A recorded command (``["python", "bench/record.py", ...]``) as it runs in this tree."""
    for i, word in enumerate(command[:2]):
        if word in MOVED:
            return [*command[:i], *MOVED[word].split(), *command[i + 1:]]
    return list(command)

# The plain path, --set options: what the reference release does (fp32, NCHW, PIL transforms in
# DataLoader workers).
PLAIN = ["trainer.autocast=null", "trainer.channels_last=false", "trainer.compile=false", "trainer.cuda_graph=false",
         "data_loader.args.pipeline=pil"]


def ensure_cifar10(data_dir):
    """``data_dir`` holding ``cifar-10-batches-py``: as it is, else written by the script named in
    ``$CIFAR10_MAKER`` (called with the folder, for offline machines), else downloaded by torchvision."""
    if not (Path(data_dir) / "cifar-10-batches-py").is_dir():
        from utils.errors import UserError
        if Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise UserError(f"--data_dir {data_dir} is not a folder; expected one holding cifar-10-batches-py/")
        maker = os.environ.get("CIFAR10_MAKER")
        if maker:
            code = subprocess.run([sys.executable, maker, str(data_dir)]).returncode
            if code:
                raise UserError(f"--data_dir {data_dir}: $CIFAR10_MAKER {maker} failed (exit {code}); expected it "
                                "to write cifar-10-batches-py/ there")
        else:
            from torchvision.datasets import CIFAR10
            try:
                CIFAR10(str(data_dir), train=True, download=True)
            except Exception as e:  # noqa: BLE001 - offline (URLError), a full disk, a torn archive
                raise UserError(f"--data_dir {data_dir} holds no cifar-10-batches-py/ and downloading it failed "
                                f"({type(e).__name__}); put CIFAR-10 there, or set $CIFAR10_MAKER to a script that "
                                "writes it") from None
    return Path(data_dir)


def load_model_and_data(checkpoint=None, config=ROOT / "configs" / "config_cifar10_ir100_tade.json",
                        data_dir=DEFAULT_DATA, device="cpu", sets=()):
    """A ``trainer.build.Trained`` (net, config, data, perf, checkpoint): a trained checkpoint, or the
    config's network freshly initialised (enough for timing), built the way the scripts build it."""
    from trainer.build import Trained, build_data, build_model, build_performance, load_trained, resolve_config
    from utils.parse_config import parse_set_expression

    if checkpoint and not Path(checkpoint).is_file():  # before the data (which may be downloaded)
        from utils.errors import UserError
        raise UserError(f"--checkpoint {checkpoint} is not a file; expected a trained checkpoint")
    ensure_cifar10(data_dir)
    overrides = [("data_loader.args.data_dir", str(data_dir), "--data_dir")]
    overrides += [(*parse_set_expression(s), "--set") for s in sets]
    if checkpoint:
        return load_trained(checkpoint, None, overrides, device)
    cfg, _ = resolve_config(config, None, overrides)
    perf = build_performance(cfg)
    net = perf.apply_layout(build_model(cfg).to(device)).eval()
    return Trained(net, cfg, build_data(cfg), perf, None)


def output_path(out, source, default_name, writer, legacy=None):
    """A bench tool's ``--out`` (default: ``default_name`` beside ``source``), checked by the write
    rule (utils/safe_write.py) before any work: not a link, not in a recorded result, new or an
    earlier result of ``writer`` (``"written_by"``; ``legacy`` recognises files from before that key)."""
    from utils.safe_write import check_target, record_of
    from utils.errors import UserError
    path = Path(out) if out else Path(source).with_name(default_name)
    if not out and record_of(path) is not None:
        raise UserError(f"{source} lies in the recorded result {record_of(path)}, which is read-only; give --out "
                        f"PATH outside it for {default_name}")
    return check_target(path, writer, legacy=legacy)


def write_report(path, report, writer, table=None):
    """The tool's JSON report, atomically, saying who wrote it; NaN or infinite numbers are refused.
    ``table`` (Markdown) is printed and kept in the report under ``"table"``."""
    from utils.safe_write import write_json
    if table is not None:
        report["table"] = table
        print("\n" + table)
    written = write_json(path, {"written_by": writer, **report}, indent=1, default=float)
    if table is not None:
        print(f"wrote {path}")
    return written


def timed_script(tool, name, *args, device=None, data_dir=None):
    """(seconds, stdout) of one entry point (``test.py``, ``test_train.py``) run from the project root
    in a fresh process, as a user runs it; a failure ends ``tool`` with one line."""
    import time
    cmd = [sys.executable, str(ROOT / name), *map(str, args), *(["-d", device] if device else []),
           *(["--data_dir", str(data_dir)] if data_dir else [])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{tool}: {name} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return seconds, proc.stdout


def checkpoint_parser(doc):
    """The arguments of a benchmark that evaluates one trained checkpoint: CHECKPOINT, -d, --data_dir,
    --out (usage errors are one line, exit 2)."""
    import argparse
    from utils.cli import ArgumentParser
    p = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("-d", "--device", default="cpu")
    p.add_argument("--data_dir")
    p.add_argument("--out", help="results JSON (default: beside the checkpoint)")
    return p
