"""What the label-shift methods cost beside one test pass, with the validation cache cold and warm.

Times, in one process (a quiet machine is needed for meaningful numbers):
1. one ``test.py`` pass: the clean expert logits of the whole test set;
2. the first label-shift call: the validation split's logits (a network pass, then written to the
   cache beside the checkpoint, trainer/validation_cache.py) plus the calibration;
3. with the cache warm: every label-shift method (EM, MAP, the shipped prior config's SafePrior,
   the oracle prior) on all eleven distributions, each method built afresh so its calibration
   is recomputed, reading the validation logits from the cache.
Prints the ratio (test pass + step 3) / test pass, the figure the target "at most 1.2x one test
pass with the cache warm" is about, and step 2 separately. The cache file is removed first so the
cold figure is a cold one (``--keep_cache`` keeps it).
"""
import json
import time
from pathlib import Path

import trainer.test_time as methods
from bench.studies.test_time_methods import family_config
from trainer.adaptation import run_method, validation_source
from trainer.build import load_trained, resolve_config
from trainer.forward import collect_expert_logits
from trainer import validation_cache
from utils.errors import UserError
from utils.parse_config import ConfigParser


def label_shift_methods(prior_cfg):
    shared = {k: v for k, v in prior_cfg["test_time"]["args"].items()
              if k in ("calibration", "source_prior", "temperature", "bias", "tol", "max_iter")}
    return {"EM": lambda: methods.EMPrior(**shared), "MAP": lambda: methods.MAPPrior(**shared),
            "SafePrior (shipped)": lambda: prior_cfg.init_obj("test_time", methods),
            "oracle prior (uses test labels)": lambda: methods.OraclePrior()}


def add_arguments(p):
    p.add_argument("--data_dir", help="the checkpoint's data (default: its config's data_dir)")
    p.add_argument("--test_time_config", help="the prior config (default: configs/test_time_<family>_prior.json)")
    p.add_argument("--keep_cache", action="store_true", help="keep the validation cache (the cold figure is then warm)")


def run(args):
    if not args.checkpoint:
        raise UserError("bench/speed/speed.py label-shift: --checkpoint is needed (a trained model)")
    dataset = resolve_config(None, args.checkpoint)[0]["data_loader"]["type"]
    config_path = Path(args.test_time_config) if args.test_time_config else family_config("prior", dataset)
    raw = json.loads(config_path.read_text())
    prior_cfg = ConfigParser(raw, str(config_path))
    overrides = [("data_loader.args.data_dir", args.data_dir, "--data_dir")]
    if "validation" in raw["test_time"]:
        overrides.append(("data_loader.args.validation", raw["test_time"]["validation"], str(config_path)))
    trained = load_trained(args.checkpoint, None, overrides, args.device)
    split = validation_cache.split_key(trained.data)
    cache = validation_cache.cache_path(trained.path, split)
    if cache.exists() and not args.keep_cache:
        cache.unlink()
    t0 = time.perf_counter()
    clean, targets = collect_expert_logits(trained.net, trained.data.test_loader(device=args.device), args.device,
                                           trained.perf)
    test_pass = time.perf_counter() - t0
    sets = trained.data.test_distributions()
    make = label_shift_methods(prior_cfg)
    t0 = time.perf_counter()
    run_method(make["SafePrior (shipped)"](), trained, clean, targets, {"uniform": sets["uniform"]}, args.device)
    first = time.perf_counter() - t0
    per_method = {}
    t0 = time.perf_counter()
    for name, factory in make.items():
        s = time.perf_counter()
        run_method(factory(), trained, clean, targets, sets, args.device,
                   validation=validation_source(trained, args.device))  # a fresh source: read from the cache
        per_method[name] = time.perf_counter() - s
    warm = time.perf_counter() - t0
    print(f"validation split: {len(trained.data.validation_set)} images ({trained.data.validation_info['per_class']} "
          f"per class); cache {cache}")
    print(f"one test pass: {test_pass:.2f} s")
    print(f"first label-shift call (validation pass + cache write + calibration, uniform only): {first:.2f} s")
    print("warm cache, all eleven distributions: " + ", ".join(f"{k} {v:.2f} s" for k, v in per_method.items()))
    print(f"(test pass + every label-shift method, warm) / test pass = {(test_pass + warm) / test_pass:.2f}x "
          "(target: at most 1.2x)")
