"""Training throughput of the TADE recipe on CIFAR-10-LT IR100 (real data), batch 128.

    python bench/train_speed.py --data_dir .cache/cifar [--epochs 1] [--set KEY=VALUE ...]

Prepares CIFAR-10 with ../shared/data/make_cifar10.py if the folder lacks it, trains through
train.py (the real code path) without evaluation, and prints one line with images/s.
"""
import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", default=str(ROOT / ".cache" / "cifar"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("-d", "--device", default="cpu")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    ensure_cifar10(args.data_dir)
    rates = measure(args.data_dir, args.epochs, args.set, args.device)
    print(f"TADE CIFAR-10-LT IR100 batch 128 ({args.device}, {' '.join(args.set) or 'config defaults'}): "
          f"{max(rates):.1f} images/s (epochs: {', '.join(f'{r:.1f}' for r in rates)})")


if __name__ == "__main__":
    main()
