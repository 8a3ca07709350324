"""How sensitive a model is to JPEG compression of its test images: the plain expert average's top-1
on the eleven distributions with the test images as they are and re-encoded at several JPEG
qualities (array data sets: CIFAR-LT, Digits-LT).

    python bench/studies/jpeg_sensitivity.py CHECKPOINT [--data_dir PATH] [-d DEVICE] [--qualities 95,75,50,30]
        [--out RESULTS.json]

The CIFAR-10 copy on these machines is itself a JPEG re-encoding (quality about 75) of the original
images, and both the training and the test images went through it. Re-encoding the test images once
more, at the same and at harsher qualities, measures how far the model's accuracy moves with one
more JPEG step: a bound on how much the copy can shift published comparisons.
"""
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path

from base.base_model import average_experts
from bench.common import checkpoint_parser, output_path, write_report
from trainer.build import load_trained
from trainer.evaluation import distribution_metrics
from trainer.forward import collect_expert_logits
from utils.cli import comma_ints
from utils.errors import UserError, cli_entry

WRITER = "bench/studies/jpeg_sensitivity.py"


def reencode(images, quality):
    """uint8 N x H x W x 3 -> the same images after one JPEG round trip at ``quality``."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


@cli_entry
def main(argv=None):
    p = checkpoint_parser(__doc__)
    p.add_argument("--qualities", default="95,75,50,30", type=comma_ints("JPEG qualities", 1, 100, example="95,75,50"))
    args = p.parse_args(argv)
    out = output_path(args.out, args.checkpoint, "jpeg_sensitivity.json", WRITER,
                      legacy=lambda r: isinstance(r.get("qualities"), dict) and "checkpoint" in r)
    trained = load_trained(args.checkpoint, None, [("data_loader.args.data_dir", args.data_dir, "--data_dir")],
                           args.device)
    data = trained.data
    if not hasattr(data, "test_images"):
        raise UserError(f"jpeg_sensitivity: {type(data).__name__} holds no image arrays (CIFAR-LT, Digits-LT only)")
    dists = data.test_distributions()
    original = data.test_set.data
    rows, report = [], {"checkpoint": args.checkpoint, "qualities": {}}
    for quality in [None] + args.qualities:
        data.test_set.data = original if quality is None else reencode(original, quality)
        data._device_sets.pop(("test", str(args.device)), None)  # the tensor pipeline's cached copy
        logits, targets = collect_expert_logits(trained.net, data.test_loader(device=args.device), args.device,
                                                trained.perf, desc=f"JPEG {quality or 'none'}")
        preds = average_experts(logits).argmax(1)
        res = distribution_metrics(preds, targets, dists, data.num_classes, data.shot_masks())
        label = "as stored" if quality is None else f"JPEG quality {quality}"
        report["qualities"][label] = res
        top = [100 * r["top1"] for r in res.values()]
        rows.append(f"| {label} | {100 * res['uniform']['top1']:.2f} | {sum(top) / len(top):.2f} |")
        print(rows[-1], flush=True)
    data.test_set.data = original
    write_report(out, report, WRITER, table="| test images | uniform top-1 | mean of 11 |\n|---|---|---|\n"
                 + "\n".join(rows))


if __name__ == "__main__":
    main()
