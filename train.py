"""Train a (multi-expert) long-tailed model from a JSON config.

    python train.py -c configs/config_cifar100_ir100_tade.json [-r CHECKPOINT] [-d DEVICE] ...
    torchrun --nproc_per_node=N train.py -c CONFIG ...
"""
import argparse

from model.pretrained import apply_config_pretrained
from trainer import Trainer
from trainer.build import (build_data, build_loss, build_model, build_performance, settle_class_count, resolve_config,
                           wrap_for_training)
from trainer.optim import build_lr_scheduler, build_optimizer
from utils.cli import ArgumentParser, finite_float, positive_int
from utils.errors import UserError, cli_entry
from utils.known_keys import check_config_keys
from utils.logger import close_log_file, log_to_file, setup_logging
from utils.run_folder import RunFolder, check_folder_name
from utils.runtime import setup_runtime, teardown_runtime
from utils.seed import seed_everything
from utils.trainer_schema import trainer_settings

SECTIONS = ("arch", "data_loader", "loss", "optimizer", "trainer")


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="JSON config (with -r: overrides the checkpoint's config)")
    p.add_argument("-r", "--resume", help="checkpoint to resume (last.pth of a run)")
    p.add_argument("-d", "--device", help="cpu, cuda, cuda:N or a GPU list like 0,1 (DataParallel)")
    p.add_override("--seed", type=int, key="seed")
    p.add_override("--epochs", type=int, key="trainer.epochs")
    p.add_override("--lr", type=finite_float, key="optimizer.args.lr")
    p.add_override("--bs", type=positive_int, key="data_loader.args.batch_size", help="global batch size")
    p.add_override("--name", key="name", help="run name (folder under save_dir)")
    p.add_override("--data_dir", key="data_loader.args.data_dir")
    p.add_override("--save_dir", key="trainer.save_dir")
    p.add_argument("--run_id", help="run folder name (default: date and time)")
    p.add_set_option()
    return p


def resolve_training_config(args, parser):
    """Config from -c, or from the -r checkpoint (-c overriding it), plus command-line overrides."""
    if args.config is None and args.resume is None:
        raise UserError("train.py: give a config with -c CONFIG (or resume a run with -r CHECKPOINT)")
    config, _ = resolve_config(args.config, args.resume, parser.overrides(args), SECTIONS, "train.py")
    config.config.setdefault("seed", 1)
    check_config_keys(config.config, config.source)
    config.get_seed("seed")
    check_folder_name(config.get("name", "run"), f"config {config.source}: name (or --name)")
    if args.run_id is not None:
        check_folder_name(args.run_id, "--run_id")
    trainer_settings(config["trainer"], config.source)  # every trainer key, before any work
    return config


def forks(args):
    """``-r RUN/last.pth`` with ``--run_id``, ``--save_dir`` or ``--name``: the resumed run continues
    in a new folder and RUN is left untouched."""
    return args.resume is not None and any(v is not None for v in (args.run_id, args.save_dir, args.name))


def run_folder(args, config):
    """The folder this run writes (locked): the resumed checkpoint's, or a new one (also when a
    resume forks; removed again by ``RunFolder.discard_if_unused`` if the run fails before its first
    checkpoint)."""
    if args.resume is not None and not forks(args):
        return RunFolder.existing(args.resume)
    settings = trainer_settings(config["trainer"], config.source)
    return RunFolder.create(settings["save_dir"], config.get("name", "run"), args.run_id)


def build_rank_data(config, runtime):
    data = build_data(config)
    data.rank_batch_size(runtime.world_size)  # the global batch must split evenly over the processes
    return data


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    runtime = setup_runtime(args.device)
    folder = None
    logger = setup_logging(None, runtime.is_main)  # info.log starts once the run folder exists
    try:
        # Every rank checks the config, reads the data and builds the model; an error on any rank
        # ends all of them with its one-line message (``fail_together``). Processes that share a
        # machine read (or download) the data after its first process. Only rank 0 creates the
        # run folder (after the checks) and writes files.
        data = None
        with runtime.fail_together():
            config = resolve_training_config(args, parser)
            if runtime.is_main and args.resume is not None and not forks(args):
                folder = RunFolder.existing(args.resume)  # locked and checked writable before any long work
            if runtime.local_rank == 0:
                data = build_rank_data(config, runtime)
        with runtime.fail_together():
            if data is None:
                data = build_rank_data(config, runtime)
            seed_everything(config.get_seed("seed"))
            settle_class_count(config, data)
            net = build_model(config)
            if args.resume is None:
                apply_config_pretrained(config, net)
            criterion = build_loss(config, data, net.num_experts).to(runtime.device)
            # Memory layout before wrapping: DDP must not see its parameters replaced afterwards.
            perf = build_performance(config)
            net = perf.apply_layout(net.to(runtime.device))
        net = perf.maybe_compile(wrap_for_training(net, runtime, config))
        with runtime.fail_together():
            optimizer = build_optimizer(config, net)
            scheduler = build_lr_scheduler(config, optimizer)
            if runtime.is_main and folder is None:
                folder = run_folder(args, config)
        run_dir = runtime.broadcast_object(folder.path if folder is not None else None)
        with runtime.fail_together():
            trainer = Trainer(net, criterion, optimizer, scheduler, config, runtime, data,
                              scaler=perf.grad_scaler(runtime.device), perf=perf, run_dir=run_dir)
            if args.resume is not None:
                trainer.resume(args.resume)  # a refused checkpoint stops before any file of the run is written
            idle = args.resume is not None and trainer.start_epoch >= trainer.epochs
            if runtime.is_main and not idle:
                if forks(args):
                    logger.info("forked from %s: this run continues in %s, which is left untouched",
                                args.resume, run_dir)
                if folder.reused:
                    logger.info("run folder %s: taken over from a run that was killed before its first checkpoint",
                                run_dir)
                log_to_file(run_dir)  # with the lines logged so far
                folder.write_config(config.config)
                folder.write_split_files(data.split_files())
                n_params = sum(p.numel() for p in net.parameters())
                logger.info("run folder %s | %s, %d parameters | %d training images, %d classes | device %s%s%s",
                            run_dir, config["arch"]["type"], n_params, len(data.train_set), data.num_classes,
                            runtime.device, _processes(runtime, data), f" | {perf.precision(runtime.device)}")
        if idle:  # a resume with nothing left to train writes nothing (not even config.json or info.log)
            if runtime.is_main:
                logger.info("nothing to train: %s holds epoch %d and trainer.epochs is %d; no file written",
                            args.resume, trainer.start_epoch, trainer.epochs)
                folder.discard_if_unused()  # a fork's new folder; the resumed run's folder is only unlocked
                folder = None
        else:
            trainer.train()
        if runtime.is_main and folder is not None:
            if (run_dir / "last.pth").exists():
                logger.info("finished: %s (last epoch), model_best.pth (best on the evaluation split)",
                            run_dir / "last.pth")
            else:  # trainer.epochs 0: a run without a checkpoint leaves no folder behind
                logger.info("finished: no epoch to train (trainer.epochs %d), no checkpoint written; %s removed",
                            trainer.epochs, run_dir)
                close_log_file()
                folder.discard_if_unused()
                folder = None
    except BaseException:
        if folder is not None:
            close_log_file()  # before a folder without a checkpoint is removed with its info.log
            folder.discard_if_unused()  # only rank 0 created one
            folder = None
        raise
    finally:
        if folder is not None:
            folder.close()
        teardown_runtime(runtime)


def _processes(runtime, data):
    if not runtime.distributed:
        return ""
    return (f" x {runtime.world_size} processes (DDP, batch {data.batch_size} = "
            f"{runtime.world_size} x {data.rank_batch_size(runtime.world_size)})")


if __name__ == "__main__":
    main()
