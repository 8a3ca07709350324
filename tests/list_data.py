"""A generated list-based dataset in the real layout: small JPEGs under ``images/`` and
``relative/path label`` lists, with class frequencies that are not in label order."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import ROOT

# Training images per class: label order is not frequency order (Places-style relabelling moves them).
TRAIN_COUNTS = (6, 14, 3, 10, 2)


def write_list_dataset(root, train_counts=TRAIN_COUNTS, test_per_class=4, size=(40, 30), seed=0, val_per_class=2):
    """JPEGs ``images/{split}/c{label}/{j}.jpg`` (each class a different mean colour) and the lists
    ``train.txt``, ``test.txt`` and ``val.txt``; returns a dict of the paths."""
    rng = np.random.RandomState(seed)
    root = Path(root)
    paths = {"data_dir": root / "images", "train_txt": root / "train.txt", "test_txt": root / "test.txt",
             "val_txt": root / "val.txt"}
    splits = (("train", train_counts), ("test", [test_per_class] * len(train_counts)),
              ("val", [val_per_class] * len(train_counts)))
    for split, counts in splits:
        lines = []
        for label, n in enumerate(counts):
            folder = paths["data_dir"] / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.randint(0, 256, size=3)
            for j in range(n):
                pixels = np.clip(base + rng.randint(-40, 40, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{j}.jpg", quality=90)
                lines.append(f"{split}/c{label}/{j}.jpg {label}")
        rng.shuffle(lines)  # lists need not be grouped by class
        paths[f"{split}_txt"].write_text("\n".join(lines) + "\n")
    return paths


def list_module_args(paths, **overrides):
    args = {"data_dir": str(paths["data_dir"]), "train_txt": str(paths["train_txt"]),
            "test_txt": str(paths["test_txt"]), "val_list": str(paths["val_txt"]), "num_classes": len(TRAIN_COUNTS),
            "test_distribution_txt": None,
            "image_size": 32, "batch_size": 8, "num_workers": 0, "test_ratios": [5, 2]}
    args.update(overrides)
    return args


def small_list_config(paths, save_dir, epochs=1, loader="ImageNetLTDataLoader", **loader_args):
    """The ImageNet-LT TADE recipe on the generated lists: 32-px images, a ResNet-32 backbone so a
    CPU epoch takes seconds (the big backbones are tested on the meta device)."""
    config = json.loads((ROOT / "configs" / "config_imagenet_lt_resnext50_tade.json").read_text())
    config["name"] = "small_list"
    config["arch"] = {"type": "ResNet32Model", "args": {"num_classes": len(TRAIN_COUNTS), "reduce_dimension": True,
                                                        "num_experts": 3}}
    config["data_loader"]["type"] = loader
    config["data_loader"]["args"].update(list_module_args(paths, batch_size=8, **loader_args))
    config["lr_scheduler"]["args"]["T_max"] = epochs
    config["trainer"].update(epochs=epochs, save_dir=str(save_dir), save_period=1, valid_period=1, tensorboard=False)
    return config
