"""Predicting unlabeled images (test_train.py --images; docs/own_data.md).

The images (every image below a folder, or the paths of a list file) go through the network once
under the checkpoint's test transform; the test-time method adapts to their expert logits (and, a
method that needs them, to augmented views of the same images: by default each epoch's pair of views
of every image drawn once, fixed by the seed and the image, as the test sets' shared views,
trainer/view_logits.py) and its scores give each image's prediction. No label is read. An image
that cannot be decoded is reported by path and left out (or, ``strict``, stops the run before
anything is written). Images are read by data_loader/image_file.py's rule (upright by their
orientation tag, first frame, 16-bit grey scaled to 8 bits).
"""
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from base.base_test_time import TestTimeContext, TestTimeMethod, check_result
from data_loader.image_file import read_rgb, unreadable_reason
from data_loader.image_folder import IMAGE_EXTENSIONS, images_below, is_image, others, skipped_note
from data_loader.list_lt import ListImageDataset
from trainer.adaptation import train_prior, validation_source
from trainer.forward import batch_outputs
from trainer.view_logits import NetworkViews
from utils.errors import UserError
from utils.path_text import path_text
from utils.safe_write import check_beside, check_target, digest, not_regular, write_json, write_text
from utils.two_view import SeededTwoViews, TwoViews

TOP_K = 5


def image_paths(spec, warn=None):
    """``--images DIR`` (every image below it, recursively, sorted; one ``warn`` line counts the
    files left out for their names) or ``--images LIST.txt`` (one path a line; relative paths are
    relative to the list file's folder; blank lines and lines starting with # are skipped)."""
    path = Path(spec)
    if not path.exists():
        raise UserError(f"--images {spec} does not exist; expected a folder of images or a text file of image paths")
    if path.is_dir():
        skipped = []
        paths = [str(path / rel) for rel in images_below(path, skipped)]
        note = skipped_note(path_text(str(path)), skipped)
        if note and paths:
            (warn or _warn)(note)
        if not paths:
            raise UserError(f"--images {spec}: no image below this folder (expected files ending in "
                            f"{', '.join(IMAGE_EXTENSIONS)}, any case){others(skipped)}")
        return paths
    if not path.is_file():
        raise UserError(f"--images {spec} is neither a folder nor a regular file (a FIFO or a device); expected a "
                        "folder of images or a text file of image paths")
    if is_image(path.name):
        return [str(path)]
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is no part of a path
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--images {spec}: cannot read the list file ({e}); expected one image path a line")
    paths = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry)
        p = p if p.is_absolute() else path.parent / p
        what = not_regular(p)
        if what:
            raise UserError(f"{spec}, line {number}: image {p} {what}; expected an image file")
        paths.append(str(p))
    if not paths:
        raise UserError(f"--images {spec}: the list names no image (expected one image path a line)")
    return paths


class UnlabeledImages(Dataset):
    """Images by path -> (tensor, i); an image that cannot be decoded gives a zero tensor and
    ``-(i + 1)`` in place of its index, so one bad file never stops the batch."""

    def __init__(self, paths, transform, shape):
        self.paths = list(paths)
        self.transform = transform
        self.shape = shape

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(read_rgb(self.paths[i])), i  # a FIFO named .png is not waited on
        except Exception:  # noqa: BLE001 - Pillow raises anything on a file that is not what it seems (TypeError...)
            return torch.zeros(self.shape), -(i + 1)


def image_transform(data, transform):
    """``transform`` for images of any size: the folder and list data modules resize in their own
    transforms; the in-memory ones (CIFAR, digits: fixed-size arrays) get a resize to their size first."""
    if isinstance(data.test_set, ListImageDataset):
        return transform
    size = int(getattr(data, "image_size", 32))
    return T.Compose([T.Resize((size, size)), transform])


def input_shape(data):
    size = int(getattr(data, "image_size", 32))
    return (3, size, size)


@dataclass
class ImageLogits:
    """Expert logits [n, E, C] of the readable images, their paths, and the unreadable ones."""
    logits: torch.Tensor
    paths: list
    unreadable: list = field(default_factory=list)
    seconds: float = 0.0


def why_unreadable(path):
    """Why the image at ``path`` gave no tensor (read again, in this process, for the message)."""
    try:
        read_rgb(path)
    except Exception as e:  # noqa: BLE001 - as UnlabeledImages
        return unreadable_reason(path, e)
    return "decoded, but the test transform failed on it"


def unreadable_message(path):
    return f"cannot read image {path_text(path)} ({why_unreadable(path)}); left out"


def collect_image_logits(trained, paths, device, batch_size=None, strict=False, warn=None):
    """One forward pass over ``paths`` under the checkpoint's test transform."""
    data = trained.data
    dataset = UnlabeledImages(paths, image_transform(data, data.test_set.transform), input_shape(data))
    loader = DataLoader(dataset, batch_size=batch_size or data.batch_size, shuffle=False,
                        num_workers=data.num_workers)
    warn = warn or _warn
    start = time.perf_counter()
    logits, kept, bad = [], [], []
    for out, index in batch_outputs(trained.net, loader, trained.perf, device, desc="images"):
        index = index.cpu()
        ok = index >= 0
        for j in (-index[~ok] - 1).tolist():
            if strict:
                raise UserError(f"cannot read image {path_text(paths[j])} ({why_unreadable(paths[j])}); --strict "
                                "stops at the first unreadable image, nothing was written")
            warn(unreadable_message(paths[j]))
            bad.append(paths[j])
        logits.append(out["logits"].float().cpu()[ok])
        kept += index[ok].tolist()
    if not kept:
        raise UserError(f"none of the {len(paths)} images could be read; nothing was written")
    return ImageLogits(torch.cat(logits), [paths[i] for i in kept], bad, time.perf_counter() - start)


def _warn(message):
    """One line on stderr, above the progress bar."""
    from tqdm import tqdm
    tqdm.write(f"warning: {message}", file=sys.stderr)


def calibration_logits(trained, device):
    """The validation split's expert logits for a method's calibration (computed once per call
    site, on first use), or None when the data module has none."""
    return validation_source(trained, device)


def context(method, trained, images, device, seed, validation):
    """What ``method`` sees of the unlabeled images: their training-data facts and, only if it needs
    them, the network and a loader of augmented views of the same images (by position)."""
    data = trained.data
    ctx = TestTimeContext(num_experts=trained.net.num_experts, num_classes=data.num_classes,
                          train_prior=train_prior(data), indices=torch.arange(len(images.paths)), name="images",
                          seed=seed, device=torch.device(device), validation_logits=validation,
                          validation_info=getattr(data, "validation_info", None))
    if method.needs_views:
        ctx.net, ctx.perf = trained.net, trained.perf

        def strong(augmentation):
            transform = image_transform(data, data.two_view_transform(**augmentation))
            return UnlabeledImages(images.paths, transform, input_shape(data))

        def two_view_loader(batch_size, generator, num_workers=0, **augmentation):
            return DataLoader(TwoViews(strong(augmentation)), batch_size=batch_size, shuffle=True, generator=generator,
                              num_workers=num_workers)

        def seeded_loader(view_seed, augmentation, num_workers):  # the shared views (trainer/view_logits.py)
            return DataLoader(SeededTwoViews(strong(augmentation), seed=view_seed), batch_size=data.batch_size,
                              num_workers=num_workers, generator=torch.Generator().manual_seed(view_seed))

        ctx.two_view_loader = two_view_loader
        ctx.shared_views = NetworkViews(trained.net, trained.perf, device, seeded_loader, len(images.paths), seed,
                                        data.two_view_transform, "pil")
    if method.uses_test_labels:
        raise UserError(f"{type(method).__name__} reads test labels; unlabeled images have none")
    return ctx


def has_online_form(method):
    return type(method).online is not TestTimeMethod.online


def run_on_images(method, trained, images, device, seed=1, online=False, batch_size=None):
    """(scores [n, C], facts): the method adapted to all images at once, or, ``online``, as a
    stream in batches in the images' order, each scored with what was learnt before it."""
    ctx = context(method, trained, images, device, seed, calibration_logits(trained, device))
    if online and has_online_form(method):
        adapter = method.online(ctx)
        step = batch_size or trained.data.batch_size
        scores = [adapter.step(images.logits[i:i + step]) for i in range(0, len(images.paths), step)]
        facts = adapter.summary()
        facts["stream_batch"] = step
        return torch.cat(scores), facts
    out = check_result(method.adapt(images.logits, ctx), type(method).__name__, len(images.paths),
                       trained.data.num_classes)
    scores = out["online_scores"] if online and "online_scores" in out else out["scores"]
    return scores, {k: v for k, v in out.items() if k not in ("scores", "online_scores", "history")}


def top_k(scores, names, k=TOP_K):
    """Softmax probabilities of ``scores`` -> (top-k class names [n][k], their probabilities [n, k])."""
    prob = torch.softmax(scores.double(), 1)
    k = min(k, prob.shape[1])
    p, idx = prob.topk(k, dim=1)
    return [[names[j] for j in row] for row in idx.tolist()], p.numpy()


def prediction_table(paths, scores, average_scores, names):
    """One row per image: path (as utils/path_text.py writes it: quoted where it is not plain
    UTF-8), predicted class and probability, the top-5 classes and probabilities, and the plain
    expert average's prediction and probability beside it."""
    import pandas as pd

    top_names, top_p = top_k(scores, names)
    avg_names, avg_p = top_k(average_scores, names, 1)
    table = {"path": [path_text(p) for p in paths], "prediction": [r[0] for r in top_names], "probability": top_p[:, 0]}
    for j in range(top_p.shape[1]):
        table[f"top{j + 1}"] = [r[j] for r in top_names]
        table[f"top{j + 1}_probability"] = top_p[:, j]
    table["average_prediction"] = [r[0] for r in avg_names]
    table["average_probability"] = avg_p[:, 0]
    return pd.DataFrame(table)


def named(values, names):
    return {name: float(v) for name, v in zip(names, values)}


def describe_estimate(facts, names):
    """What the method estimated, in the summary's words: the class prior (by class name) with the
    shift test's verdict (and SafePrior's strength when a shift was applied), or the expert weights."""
    out = {}
    if "prior" in facts:
        out["class_prior"] = named(facts["prior"], names)
        for key in ("shift_detected", "p_value", "log_likelihood_ratio", "divergence", "strength"):
            if key in facts:
                out[key] = facts[key]
    if "weights" in facts:
        out["expert_weights"] = list(facts["weights"])
    return out


def predicted_counts(scores, names):
    counts = np.bincount(scores.argmax(1).numpy(), minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts)}


def class_names(trained):
    """The checkpoint's class names (stored since checkpoints carry them), else the data module's."""
    from trainer.build import checkpoint_class_names

    return checkpoint_class_names(trained.checkpoint) or list(trained.data.class_names)


WRITER = "test_train.py --images"


def check_out_folder(out, inputs):
    """``--out`` (a folder for predictions.csv and summary.json) must not overwrite an input (an
    image, the list file, the checkpoint, the configs); each file must be new or what an earlier
    prediction wrote there (utils/safe_write.py). Returns (csv path, summary path)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; with --images, --out names the folder for predictions.csv and "
                        "summary.json")
    csv_path, summary_path = out / "predictions.csv", out / "summary.json"
    resolved = {os.path.realpath(p) for p in inputs}
    for f in (csv_path, summary_path):
        if os.path.realpath(f) in resolved:
            raise UserError(f"--out {out}: {f} is an input of this run; refusing to overwrite it "
                            "(choose another --out)")
    check_target(summary_path, WRITER)
    check_beside(summary_path, [csv_path], WRITER)
    return csv_path, summary_path


def write_predictions(csv_path, summary_path, table, summary):
    """predictions.csv, then summary.json naming it with its digest (both atomic)."""
    write_text(csv_path, table.to_csv(index=False))
    write_json(summary_path, {"written_by": WRITER, **summary, "files": {csv_path.name: digest(csv_path)}})
