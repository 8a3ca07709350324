"""Train a (multi-expert) long-tailed model from a JSON config.

    python train.py -c configs/config_cifar100_ir100_tade.json [-r CHECKPOINT] [-d DEVICE] ...
    torchrun --nproc_per_node=N train.py -c CONFIG ...
"""
import argparse

import data_loader
import model as models
import model.loss as losses
from trainer import Trainer
from trainer.optim import build_lr_scheduler, build_optimizer
from utils.checkpoint import load_checkpoint
from utils.errors import UserError, cli_entry
from utils.logger import setup_logging
from utils.performance import Performance
from utils.parse_config import TRAIN_SHORTCUTS, ConfigParser, parse_set_expression, read_json
from utils.runtime import setup_runtime, teardown_runtime, wrap_model
from utils.seed import seed_everything


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="JSON config (with -r: overrides the checkpoint's config)")
    p.add_argument("-r", "--resume", help="checkpoint to resume (last.pth of a run)")
    p.add_argument("-d", "--device", help="cpu, cuda, cuda:N or a GPU list like 0,1 (DataParallel)")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--bs", type=int, help="global batch size")
    p.add_argument("--name", help="run name (folder under save_dir)")
    p.add_argument("--data_dir")
    p.add_argument("--save_dir")
    p.add_argument("--run_id", help="run folder name (default: date and time)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override any existing config key; VALUE is JSON (else a string)")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2 already; keep it one line
        raise UserError(f"{self.prog}: {message}")


def parse_args(argv=None):
    parser = build_parser()
    parser.__class__ = _Parser
    return parser.parse_args(argv)


def resolve_config(args, runtime):
    """Config from -c, or from the -r checkpoint (-c overriding it), plus command-line overrides."""
    if args.config is None and args.resume is None:
        raise UserError("train.py: give a config with -c CONFIG (or resume a run with -r CHECKPOINT)")
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
            raise UserError(f"checkpoint {args.resume} holds no config of this framework; give one with -c")
        config, source = (read_json(args.config), args.config) if args.config else (ckpt["config"], args.resume)
    else:
        config, source = read_json(args.config), args.config
    overrides = [(TRAIN_SHORTCUTS[k], getattr(args, k), f"--{k}") for k in TRAIN_SHORTCUTS]
    overrides += [(*parse_set_expression(e), "--set") for e in args.set]
    ConfigParser.apply_overrides(config, overrides, source)
    for section in ("arch", "data_loader", "loss", "optimizer", "trainer"):
        if section not in config:
            raise UserError(f"config {source}: missing section '{section}'")
    config.setdefault("seed", 1)
    cfg = ConfigParser(config, source=source, resume=args.resume)
    if args.resume is not None:
        from pathlib import Path
        cfg.run_dir = Path(args.resume).resolve().parent
    elif runtime.is_main:
        cfg.run_dir = ConfigParser.new_run_dir(config["trainer"].get("save_dir", "saved"), config.get("name", "run"),
                                               args.run_id)
    return cfg


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    runtime = setup_runtime(args.device)
    try:
        config = resolve_config(args, runtime)
        logger = setup_logging(config.run_dir, runtime.is_main)
        seed_everything(int(config["seed"]))
        data = config.init_obj("data_loader", data_loader)
        net = config.init_obj("arch", models)
        criterion = config.init_obj("loss", losses, cls_num_list=data.cls_num_list).to(runtime.device)
        perf = Performance.from_config(config["trainer"], config.source)
        net = perf.prepare_model(wrap_model(net, runtime, sync_batchnorm=bool(config.get("trainer.sync_batchnorm", False))))
        net = perf.maybe_compile(net)
        optimizer = build_optimizer(config, net)
        scheduler = build_lr_scheduler(config, optimizer)
        scaler = perf.grad_scaler(runtime.device)
        if runtime.is_main:
            config.save()
            n_params = sum(p.numel() for p in net.parameters())
            logger.info("run folder %s | %s, %d parameters | %d training images, %d classes | device %s%s",
                        config.run_dir, config["arch"]["type"], n_params, len(data.train_set), data.num_classes,
                        runtime.device, f" x {runtime.world_size} processes" if runtime.distributed else "")
        trainer = Trainer(net, criterion, optimizer, scheduler, config, runtime, data, scaler=scaler)
        trainer.train()
        if runtime.is_main:
            logger.info("finished: %s (last epoch), model_best.pth (best on the evaluation split)",
                        config.run_dir / "last.pth")
    finally:
        teardown_runtime(runtime)


if __name__ == "__main__":
    main()
