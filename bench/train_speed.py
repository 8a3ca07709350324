"""Training throughput of the TADE recipe on CIFAR-10-LT IR100 (real data), batch 128: the config
defaults (bf16 autocast, channels_last, device-resident tensor pipeline) against the plain path
(fp32, NCHW, PIL transforms in DataLoader workers), run alternately, with their ratio.

    python bench/train_speed.py --data_dir .cache/cifar [--repeats 2] [--epochs 1] [--set KEY=VALUE ...]

Prepares CIFAR-10 with ../shared/data/make_cifar10.py if the folder lacks it and trains through
train.py (the real code path) without evaluation. Each variant runs ``--repeats`` times,
alternating, so a busy machine slows both alike; the best epoch of each is the figure least
disturbed by other load, the median shows the spread. ``--set`` applies to both variants.
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The plain path: what the reference release does (fp32, NCHW, PIL in DataLoader workers).
PLAIN = ["trainer.autocast=null", "trainer.channels_last=false", "trainer.compile=false",
         "data_loader.args.pipeline=pil"]


def ensure_cifar10(data_dir):
    if not (Path(data_dir) / "cifar-10-batches-py").is_dir():
        maker = ROOT.parent / "shared" / "data" / "make_cifar10.py"
        subprocess.run([sys.executable, str(maker), str(data_dir)], check=True)


def measure(data_dir, epochs=1, extra=(), device="cpu"):
    """Run train.py; return the images/s of each epoch as logged."""
    with tempfile.TemporaryDirectory() as save_dir:
        cmd = [sys.executable, str(ROOT / "train.py"), "-c", str(ROOT / "configs/config_cifar10_ir100_tade.json"),
               "-d", device, "--data_dir", str(data_dir), "--save_dir", save_dir, "--epochs", str(epochs),
               "--run_id", "bench", "--set", "trainer.valid_period=0", "--set", "trainer.monitor=off",
               "--set", "trainer.tensorboard=false", "--set", "trainer.save_period=0"]
        for item in extra:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.exit(proc.stderr[-2000:])
        return [float(v) for v in re.findall(r"images_per_s ([0-9.]+)", proc.stdout)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(ROOT / ".cache" / "cifar"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("-d", "--device", default="cpu")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--only", choices=["defaults", "plain"], help="measure one variant (no ratio)")
    args = p.parse_args()
    ensure_cifar10(args.data_dir)
    variants = {"defaults": list(args.set), "plain": PLAIN + list(args.set)}
    if args.only:
        variants = {args.only: variants[args.only]}
    rates = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, sets in variants.items():
            rates[name] += measure(args.data_dir, args.epochs, sets, args.device)
            print(f"  {name}: {rates[name][-1]:.1f} images/s", flush=True)
    for name, r in rates.items():
        print(f"TADE CIFAR-10-LT IR100 batch 128 ({args.device}, {name}: {' '.join(variants[name]) or 'config'}): "
              f"best {max(r):.1f} images/s, median {statistics.median(r):.1f} (epochs: {', '.join(f'{v:.1f}' for v in r)})")
    if len(rates) == 2:
        best = max(rates["defaults"]) / max(rates["plain"])
        median = statistics.median(rates["defaults"]) / statistics.median(rates["plain"])
        print(f"speed-up defaults / plain: {best:.2f}x (best epochs), {median:.2f}x (medians)")


if __name__ == "__main__":
    main()
