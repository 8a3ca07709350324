"""Train a (multi-expert) long-tailed model from a JSON config.

    python train.py -c configs/config_cifar100_ir100_tade.json [-r CHECKPOINT] [-d DEVICE] ...
    torchrun --nproc_per_node=N train.py -c CONFIG ...
"""
import argparse
from pathlib import Path

import data_loader
import model as models
import model.loss as losses
from model.pretrained import apply_config_pretrained
from trainer import Trainer
from trainer.optim import build_lr_scheduler, build_optimizer
from utils.checkpoint import load_checkpoint
from utils.cli import ArgumentParser
from utils.errors import UserError, cli_entry
from utils.logger import log_to_file, setup_logging
from utils.performance import Performance
from utils.parse_config import TRAIN_SHORTCUTS, ConfigParser, get_by_path, parse_set_expression, read_json
from utils.runtime import setup_runtime, teardown_runtime, wrap_model
from utils.seed import seed_everything


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def resolve_config(args):
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
    sync_bn = get_by_path(config, "trainer.sync_batchnorm", False)
    if not isinstance(sync_bn, bool):
        raise UserError(f"config {source}: trainer.sync_batchnorm {sync_bn!r}: expected true or false")
    return ConfigParser(config, source=source, resume=args.resume)


def run_folder(args, config):
    """The folder this run writes: the resumed checkpoint's, or a new one (created here and
    removed again by ``discard_new_run_dir`` if the run fails before writing)."""
    if args.resume is not None:
        return Path(args.resume).resolve().parent
    run_dir, config.created_dirs = ConfigParser.create_run_dir(config["trainer"].get("save_dir", "saved"),
                                                               config.get("name", "run"), args.run_id)
    return run_dir


def build_data(config, runtime):
    data = config.init_obj("data_loader", data_loader)
    data.rank_batch_size(runtime.world_size)  # the global batch must split evenly over the processes
    return data


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    runtime = setup_runtime(args.device)
    config = None
    logger = setup_logging(None, runtime.is_main)  # info.log starts once the run folder exists
    try:
        # Every rank checks the config, reads the data and builds the model; an error on any rank
        # ends all of them with its one-line message (``fail_together``). Processes that share a
        # machine read (or download) the data after its first process. Only rank 0 creates the
        # run folder (after the checks) and writes files.
        data = None
        with runtime.fail_together():
            config = resolve_config(args)
            if runtime.local_rank == 0:
                data = build_data(config, runtime)
        with runtime.fail_together():
            if data is None:
                data = build_data(config, runtime)
            seed_everything(config.get_int("seed"))
            net = config.init_obj("arch", models)
            if args.resume is None:
                apply_config_pretrained(config, net)
            criterion = config.init_obj("loss", losses, cls_num_list=data.cls_num_list).to(runtime.device)
            # Memory layout before wrapping: DDP must not see its parameters replaced afterwards.
            perf = Performance.from_config(config["trainer"], config.source)
            net = perf.prepare_model(net.to(runtime.device))
        net = perf.maybe_compile(wrap_model(net, runtime, sync_batchnorm=config.get("trainer.sync_batchnorm", False)))
        run_dir = None
        with runtime.fail_together():
            optimizer = build_optimizer(config, net)
            scheduler = build_lr_scheduler(config, optimizer)
            if runtime.is_main:
                run_dir = run_folder(args, config)
        config.run_dir = runtime.broadcast_object(run_dir)
        scaler = perf.grad_scaler(runtime.device)
        with runtime.fail_together():
            # Resuming happens here: a refused checkpoint stops before any file of the run is written.
            trainer = Trainer(net, criterion, optimizer, scheduler, config, runtime, data, scaler=scaler)
            if runtime.is_main:
                log_to_file(config.run_dir)  # with the lines logged so far
                config.save()
                n_params = sum(p.numel() for p in net.parameters())
                logger.info("run folder %s | %s, %d parameters | %d training images, %d classes | device %s%s",
                            config.run_dir, config["arch"]["type"], n_params, len(data.train_set),
                            data.num_classes, runtime.device, _processes(runtime, data))
        trainer.train()
        if runtime.is_main:
            logger.info("finished: %s (last epoch), model_best.pth (best on the evaluation split)",
                        config.run_dir / "last.pth")
    except BaseException:
        if config is not None:
            config.discard_new_run_dir()  # only rank 0 created one
        raise
    finally:
        teardown_runtime(runtime)


def _processes(runtime, data):
    if not runtime.distributed:
        return ""
    return (f" x {runtime.world_size} processes (DDP, batch {data.batch_size} = "
            f"{runtime.world_size} x {data.rank_batch_size(runtime.world_size)})")


if __name__ == "__main__":
    main()
