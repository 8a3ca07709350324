"""Images/s of the list datasets' training pipeline: JPEG decode (PIL) + RandomResizedCrop(224) +
flip + ColorJitter + ToTensor + Normalize, through the data module's own training loader.

Generates ``--images`` 500x375 JPEGs (the typical ImageNet size; noise plus gradients, quality 90)
in a temporary folder, then times whole epochs after the first batch (worker start-up excluded).
Prints one line.
"""
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from data_loader import ImageNetLTDataLoader
from utils.cli import nonnegative_int, positive_int


def write_jpegs(root, n, size=(500, 375), classes=10, seed=0):
    rng = np.random.RandomState(seed)
    w, h = size
    ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    lines = []
    for i in range(n):
        pixels = np.clip(ramp * rng.uniform(0.3, 1, size=3) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        rel = f"img/{i:05d}.jpg"
        os.makedirs(os.path.join(root, "img"), exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(root, rel), quality=90)
        lines.append(f"{rel} {i % classes}")
    for name in ("train.txt", "test.txt"):
        Path(root, name).write_text("\n".join(lines) + "\n")


def add_arguments(p):
    p.add_argument("--images", type=positive_int, default=512)
    p.add_argument("--workers", type=nonnegative_int, default=2)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--epochs", type=positive_int, default=2)


def run(args):
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, args.images)
        data = ImageNetLTDataLoader(data_dir=root, train_txt=f"{root}/train.txt", test_txt=f"{root}/test.txt",
                                    num_classes=10, batch_size=args.batch, num_workers=args.workers,
                                    persistent_workers=True, pin_memory=True)
        seen, elapsed = 0, 0.0
        for epoch in range(args.epochs):
            it = iter(data.train_loader(epoch, seed=1))
            next(it)  # excludes worker start-up (first epoch only with persistent workers) and the first batch
            start = time.perf_counter()
            for x, _ in it:
                seen += x.shape[0]
            elapsed += time.perf_counter() - start
    print(f"loader_speed: {seen / elapsed:.0f} images/s (500x375 JPEG -> RandomResizedCrop 224 + flip + ColorJitter, "
          f"{args.workers} workers, batch {args.batch}, {seen} images timed, {os.cpu_count()} CPU cores visible)")

