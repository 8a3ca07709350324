"""Training throughput of a TADE recipe (default: CIFAR-10-LT IR100 on real data), batch 128: the config
defaults (bf16 autocast, channels_last, device-resident tensor pipeline) against the plain path
(fp32, NCHW, PIL transforms in DataLoader workers), run alternately, with their ratio.

Prepares CIFAR-10 (``bench/common.py:ensure_cifar10``) if the folder lacks it and trains through
train.py (the real code path) without evaluation. Each variant runs ``--repeats`` times,
alternating, so a busy machine slows both alike; the best epoch of each is the figure least
disturbed by other load, the median shows the spread. ``--set`` applies to both variants.
"""
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import PLAIN, ROOT, ensure_cifar10
from utils.cli import positive_int

DEFAULT_CONFIG = ROOT / "configs" / "config_cifar10_ir100_tade.json"


def measure(data_dir, epochs=1, extra=(), device="cpu", config=DEFAULT_CONFIG):
    """Run train.py; return the images/s and the seconds of each epoch as logged."""
    with tempfile.TemporaryDirectory() as save_dir:
        cmd = [sys.executable, str(ROOT / "train.py"), "-c", str(config),
               "-d", device, "--data_dir", str(data_dir), "--save_dir", save_dir, "--epochs", str(epochs),
               "--run_id", "bench", "--set", "trainer.valid_period=0", "--set", "trainer.monitor=off",
               "--set", "trainer.tensorboard=false", "--set", "trainer.save_period=0"]
        for item in extra:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            last = proc.stderr.strip().splitlines()[-1:]
            sys.exit(f"bench/speed/speed.py train: train.py failed (exit {proc.returncode}): {last}")
        rates = [float(v) for v in re.findall(r"images_per_s ([0-9.]+)", proc.stdout)]
        seconds = [float(v) for v in re.findall(r"epoch_time_s ([0-9.]+)", proc.stdout)]
        return rates, seconds


def add_arguments(p):
    p.add_argument("--epochs", type=positive_int, default=1)
    p.add_argument("--repeats", type=positive_int, default=2)
    p.add_argument("--only", choices=["defaults", "plain"], help="measure one variant (no ratio)")


def run(args):
    if Path(args.config).resolve() == DEFAULT_CONFIG:
        ensure_cifar10(args.data_dir)
    variants = {"defaults": list(args.set), "plain": PLAIN + list(args.set)}
    if args.only:
        variants = {args.only: variants[args.only]}
    recipe_epochs = json.loads(Path(args.config).read_text())["trainer"]["epochs"]
    rates = {name: [] for name in variants}
    seconds = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, sets in variants.items():
            r, t = measure(args.data_dir, args.epochs, sets, args.device, args.config)
            rates[name] += r
            seconds[name] += t
            print(f"  {name}: {', '.join(f'{v:.1f}' for v in r)} images/s", flush=True)
    for name, r in rates.items():
        best_s = min(seconds[name])
        print(f"{Path(args.config).stem} ({args.device}, {name}: {' '.join(variants[name]) or 'config'}): "
              f"best {max(r):.1f} images/s, median {statistics.median(r):.1f} "
              f"(epochs: {', '.join(f'{v:.1f}' for v in r)}); "
              f"best epoch {best_s:.2f} s, {recipe_epochs} epochs at that pace {recipe_epochs * best_s / 60:.1f} min "
              f"(training steps only)")
    if len(rates) == 2:
        best = max(rates["defaults"]) / max(rates["plain"])
        median = statistics.median(rates["defaults"]) / statistics.median(rates["plain"])
        print(f"speed-up defaults / plain: {best:.2f}x (best epochs), {median:.2f}x (medians)")

