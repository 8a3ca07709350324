"""Label-shift methods on saved logits: the reference (training-image) logits of a checkpoint, and an
offline table of every method on the eleven distributions and the docs/methods.md#protocols protocols.

    # once: the test logits (test.py) and the training images' clean logits
    python test.py -r RUN/last.pth -d cpu --data_dir DATA --save_logits --out OUT/eval.json
    python bench/label_shift_eval.py reference -r RUN/last.pth --data_dir DATA --out OUT/reference_logits.pt
    # then, from the saved tensors only (no network):
    python bench/label_shift_eval.py evaluate --logits OUT/eval_logits.pt --reference OUT/reference_logits.pt

The evaluation never gives a method the test labels except the oracle rows.
"""
import argparse
import sys
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from base.base_test_time import TestTimeContext  # noqa: E402
from data_loader.test_protocols import dirichlet, missing_classes, stream_batches, stream_order  # noqa: E402
import trainer.test_time as tt  # noqa: E402
from bench.common import write_report  # noqa: E402
from utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from utils.errors import UserError, cli_entry  # noqa: E402
from utils.safe_write import check_target  # noqa: E402

WRITER = "bench/label_shift_eval.py"


def _our_reference(path):
    """A reference-logits file this tool wrote (``written_by``)."""
    try:
        ckpt = load_checkpoint(path)
    except UserError:
        return False
    return isinstance(ckpt, dict) and ckpt.get("written_by") == WRITER


def reference(args):
    from trainer.evaluation import collect_expert_logits, load_trained
    from utils.performance import Performance
    overrides = [("data_loader.args.data_dir", args.data_dir, "--data_dir")]
    net, config, data, _ = load_trained(args.resume, None, overrides, "cpu")
    perf = Performance.from_config(config.get("trainer"), config.source)
    logits, targets = collect_expert_logits(net, data.reference_loader(device="cpu"), "cpu", perf,
                                            desc="training images")
    save_checkpoint({"written_by": WRITER, "logits": logits, "targets": targets,
                     "cls_num_list": list(data.cls_num_list)}, args.out)
    print(f"wrote {args.out}: logits {tuple(logits.shape)}")


# ------------------------------------------------------------------------- evaluation
def method_grid():
    """(row name, method) pairs; one instance per row serves every test set (calibration cached).
    "bcts": temperature and class bias fitted on the training images (the methods' default)."""
    plain_cal = dict(temperature=1.0, bias=False)
    rows = [("plain average", tt.ExpertAverage())]
    for src in ("train", "uniform", "reference", "reference_balanced"):
        rows.append((f"oracle src={src} T=1", tt.OraclePrior(source_prior=src, **plain_cal)))
    rows.append(("oracle bcts", tt.OraclePrior()))
    for src in ("train", "uniform", "reference", "reference_balanced"):
        rows.append((f"EM src={src} T=1", tt.EMPrior(source_prior=src, **plain_cal)))
    rows.append(("EM src=reference_balanced T=fit", tt.EMPrior(source_prior="reference_balanced", bias=False)))
    rows.append(("EM bcts", tt.EMPrior()))
    rows.append(("MAP src=reference_balanced T=fit a=1", tt.MAPPrior(source_prior="reference_balanced", bias=False)))
    for a in (1.0, 10.0):
        rows.append((f"MAP bcts a={a:g} toward=plain", tt.MAPPrior(toward="plain", pseudo_count=a)))
    for strength in (1.0, 0.75, 0.5):
        for kl in (0.0, 0.05):
            for a in (1.0, 10.0):
                rows.append((f"Safe bcts s={strength:g} kl={kl:g} a={a:g}",
                             tt.SafePrior(strength=strength, min_divergence=kl, pseudo_count=a)))
    rows.append(("Safe bcts sig=1e-6 s=0.75 kl=0.05 a=1", tt.SafePrior(significance=1e-6)))
    rows.append(("Safe T-only src=reference_balanced", tt.SafePrior(source_prior="reference_balanced", bias=False)))
    rows.append(("SafePrior defaults", tt.SafePrior()))
    return rows


def test_sets(targets, distributions, num_classes, seed):
    sets = OrderedDict((name, np.asarray(idx)) for name, idx in distributions.items())
    groups = OrderedDict((name, [name]) for name in sets)
    n = len(targets)
    for alpha in (0.1, 1.0, 10.0):
        for size, tag in ((min(2000, n), ""), (100, "_n100")):
            d = dirichlet(targets, num_classes, alpha, draws=10, size=size, seed=seed)
            keys = []
            for k, v in d.items():
                sets[k + tag] = v
                keys.append(k + tag)
            groups[f"dir{alpha:g}{tag}"] = keys
    m = missing_classes(targets, num_classes, 0.3, draws=5, seed=seed)
    sets.update(m)
    groups["missing0.3"] = list(m)
    return sets, groups


def evaluate(args):
    torch.set_num_threads(args.threads)
    saved = load_checkpoint(args.logits)
    logits, targets = saved["logits"].float(), saved["targets"].long()
    ref = load_checkpoint(args.reference)
    ref_logits, ref_targets = ref["logits"].float(), ref["targets"].long()
    c = logits.shape[2]
    train_prior = torch.bincount(ref_targets, minlength=c).double()
    train_prior /= train_prior.sum()
    sets, groups = test_sets(targets.numpy(), saved["distributions"], c, args.seed)
    rows = method_grid()
    if args.only:
        rows = [r for r in rows if r[0] == "plain average" or any(s in r[0] for s in args.only.split(","))]
    table, facts = OrderedDict(), OrderedDict()
    for row, method in rows:
        t0 = time.time()
        accs, info = OrderedDict(), OrderedDict()
        for name, idx in sets.items():
            idx_t = torch.as_tensor(idx, dtype=torch.long)
            ctx = TestTimeContext(num_experts=logits.shape[1], num_classes=c, train_prior=train_prior,
                                  indices=idx_t, name=name, reference_logits=lambda: (ref_logits, ref_targets),
                                  targets=targets[idx_t] if method.uses_test_labels else None)
            out = method.adapt(logits[idx_t], ctx)
            accs[name] = float((out["scores"].argmax(1) == targets[idx_t]).double().mean()) * 100
            info[name] = {k: out[k] for k in ("shift_detected", "temperature", "iterations", "divergence", "p_value") if k in out}
        table[row] = accs
        facts[row] = info
        print(f"{row:45s} {time.time() - t0:6.1f}s", flush=True)
    if args.online:
        for row, method in rows:
            if method.uses_test_labels:
                continue
            for name in saved["distributions"]:
                idx = np.asarray(saved["distributions"][name])
                stream = idx[stream_order(idx, seed=args.seed)]
                ctx = TestTimeContext(num_experts=logits.shape[1], num_classes=c, train_prior=train_prior,
                                      name=name, reference_logits=lambda: (ref_logits, ref_targets))
                adapter = method.online(ctx)
                correct = 0
                for b in stream_batches(stream, args.batch):
                    b_t = torch.as_tensor(b, dtype=torch.long)
                    correct += int((adapter.step(logits[b_t]).argmax(1) == targets[b_t]).sum())
                table[row][f"online_{name}"] = correct / len(stream) * 100
    payload = {"table": table, "groups": groups, "facts": facts}
    if args.out:
        write_report(args.out, payload, WRITER)
    print_table(table, groups, list(saved["distributions"]), args.online)


def print_table(table, groups, dist_names, online=False):
    plain = table["plain average"]
    cols = list(dist_names) + [g for g in groups if g not in dist_names]
    short = {n: n.replace("forward", "F").replace("backward", "B").replace("uniform", "Uni") for n in cols}
    if online:
        cols += [f"online_{n}" for n in dist_names]
        short.update({f"online_{n}": "o" + short[n] for n in dist_names})
    header = f"{'method':45s}" + "".join(f" {short[c]:>8s}" for c in cols) + f"{'worst11':>9s}{'worstAll':>9s}"
    print(header)
    for row, accs in table.items():
        vals = []
        for col in cols:
            keys = groups.get(col, [col])
            vals.append(np.mean([accs[k] for k in keys]) if all(k in accs for k in keys) else float("nan"))
        worst11 = min(accs[n] - plain[n] for n in dist_names)
        worst_all = min(np.mean([accs[k] for k in groups[g]]) - np.mean([plain[k] for k in groups[g]])
                        for g in groups)
        print(f"{row:45s}" + "".join(f" {v:8.2f}" for v in vals) + f"{worst11:9.2f}{worst_all:9.2f}")


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference", help="clean logits of the training images")
    r.add_argument("-r", "--resume", required=True)
    r.add_argument("--data_dir")
    r.add_argument("--out", required=True)
    e = sub.add_parser("evaluate", help="the offline table")
    e.add_argument("--logits", required=True)
    e.add_argument("--reference", required=True)
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--only", help="comma list of row-name substrings (plus the plain average)")
    e.add_argument("--online", action="store_true", help="also the streaming protocol on the eleven sets")
    e.add_argument("--batch", type=int, default=128)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--out", help="write the table as JSON")
    args = p.parse_args(argv)
    if args.out:  # before any work
        check_target(args.out, WRITER, recognise=_our_reference if args.cmd == "reference" else None)
    reference(args) if args.cmd == "reference" else evaluate(args)


if __name__ == "__main__":
    main()
