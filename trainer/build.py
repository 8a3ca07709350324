"""One way to build a run, used by train.py, test.py, test_train.py and every bench/ script:

    config from -c CONFIG, or the one stored in the checkpoint (-c replaces it)
      -> command-line overrides -> ConfigParser
      -> data module, model (+ trained weights), precision settings (built once per process)

Each step is a function, so a script takes the steps it needs; ``load_trained`` is the whole chain
for a trained checkpoint. This module wires the packages together, so it sits at the top of the
import stack (``utils`` and ``base`` below, then ``data_loader`` and ``model``, then ``trainer``).

A config read from a checkpoint may name only this project's types: a dotted ``type`` whose module
lies outside the project is refused before anything is imported (a checkpoint must never run code).
Such a type is allowed from a config the user gives with ``-c`` (or sets with ``--set``), or from a
checkpoint when its top-level package is named in the environment variable ``TADE_ALLOW_IMPORT``
(comma-separated: the explicit opt-in, for test_train.py, whose ``-c`` is the test-time config); it
is then named in the log.
"""
import inspect
import logging
import os
from dataclasses import dataclass

import torch

import data_loader
import model as models
import model.loss as losses
import trainer.test_time as test_time_methods
from model.fold_batchnorm import folded_copy
from model.sync_batchnorm import convert_sync_batchnorm
from utils.checkpoint import config_from_checkpoint, extract_state_dict, load_checkpoint, load_model_weights
from utils.errors import UserError
from utils.known_keys import check_arguments, unknown_key_error
from utils.parse_config import ConfigParser, read_json
from utils.performance import Performance
from utils.registry import is_project_module
from utils.runtime import wrap_model

DEFAULT_TEST_TIME_METHOD = "SelfSupervisedAggregation"
ALLOW_IMPORT = "TADE_ALLOW_IMPORT"  # packages outside the project a checkpoint's config may import


def resolve_config(config_path=None, checkpoint=None, overrides=(), sections=("arch", "data_loader"),
                   script="this script"):
    """The run's config: ``config_path`` if given, else the config stored in ``checkpoint``, with the
    command-line ``overrides`` applied; every name in ``sections`` must be present. Returns
    (ConfigParser, loaded checkpoint or None)."""
    ckpt = load_checkpoint(checkpoint) if checkpoint is not None else None
    if config_path is not None:
        config, source = read_json(config_path), config_path
    elif ckpt is not None:
        config, source = config_from_checkpoint(ckpt), checkpoint
        if config is None:
            raise UserError(f"checkpoint {checkpoint} holds no config of this framework; give one with -c")
    else:
        raise UserError(f"{script}: give a config with -c CONFIG (or a checkpoint with -r CHECKPOINT)")
    stored = dict(outside_types(config)) if config_path is None else {}
    origins = ConfigParser.apply_overrides(config, overrides, source)
    allowed = {name.strip() for name in os.environ.get(ALLOW_IMPORT, "").split(",") if name.strip()}
    for key_path, type_name in outside_types(config):
        if stored.get(key_path) == type_name and type_name.split(".")[0] not in allowed:  # the checkpoint's own
            raise UserError(f"checkpoint {checkpoint}: its config's {key_path} {type_name!r} names a module outside "
                            f"this project, which a checkpoint may not import; to use it, give the config with -c "
                            f"or allow the package with {ALLOW_IMPORT}={type_name.split('.')[0]}")
        _note(f"config {source}: {key_path} {type_name!r} is imported from outside this project")
    for section in sections:
        if section not in config:
            raise UserError(f"config {source}: missing section '{section}'")
    parsed = ConfigParser(config, source=source, origins=origins)
    check_set_arguments(parsed, overrides)
    return parsed, ckpt


def section_modules():
    """Where each section's ``type`` is looked up: the modules its builder hands ``init_obj``."""
    import torch

    import trainer.lr_scheduler as schedulers
    return {"arch": models, "data_loader": data_loader, "loss": losses, "optimizer": torch.optim,
            "lr_scheduler": [schedulers, torch.optim.lr_scheduler], "test_time": test_time_methods}


def check_set_arguments(config, overrides):
    """``--set SECTION.args.KEY=VALUE`` may add an argument the file does not write; KEY must be an
    argument of the class ``SECTION.type`` names, checked now (before the data is read), also for a
    section the script does not build."""
    modules = section_modules()
    for key_path, _, option in overrides:
        name, *rest = key_path.split(".")
        if option == "--set" and len(rest) == 2 and rest[0] == "args" and name in modules and name in config:
            cls, _ = config._lookup(name, modules[name])
            check_arguments(config.source, name, cls, [rest[1]])


def outside_types(config, prefix=""):
    """(key path, type) for every dotted ``type`` of ``config`` (any depth) whose module is not part
    of this project; found without importing anything."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        path = f"{prefix}{key}"
        if key == "type" and isinstance(value, str) and "." in value and not is_project_module(value):
            yield path, value
        elif isinstance(value, (dict, list)):
            yield from outside_types(value, path + ".")


def _note(message):
    """A line for the log of train.py (its logger is set up), else for stdout (stderr stays for errors)."""
    logger = logging.getLogger("train")
    if logger.handlers:
        logger.info(message)
    else:
        print(f"note: {message}", flush=True)


def build_data(config):
    """The data module named by ``data_loader.type``."""
    return config.init_obj("data_loader", data_loader)


def build_model(config):
    """The network named by ``arch.type`` (freshly initialised)."""
    return config.init_obj("arch", models)


def settle_class_count(config, data):
    """The model's ``num_classes`` is the data's. A config without ``arch.args.num_classes`` (for a
    model that takes one) gets the data's count, e.g. the class folders the folder data module found,
    written into the resolved config (so the run's config.json and its checkpoints name it); a given
    number that differs is refused with the right one (a 5-class head on 10-class data would fail
    with an IndexError mid-epoch)."""
    cls, section = config._lookup("arch", models)
    args = section.get("args") or {}
    try:
        parameter = inspect.signature(cls).parameters.get("num_classes")
    except (TypeError, ValueError):
        parameter = None
    if "num_classes" not in args and parameter is not None:
        section["args"] = {**args, "num_classes": data.num_classes}
        _note(f"config {config.source}: arch.args.num_classes not given; {data.num_classes}, the classes of "
              f"{config['data_loader']['type']}")
        return
    count = args.get("num_classes", parameter.default if parameter is not None else None)
    if isinstance(count, int) and count != data.num_classes:
        raise UserError(f"config {config.source}: arch.args.num_classes is {count}, but "
                        f"{config['data_loader']['type']} has {data.num_classes} classes; expected "
                        f"arch.args.num_classes {data.num_classes}")


def checkpoint_class_names(ckpt):
    """The class names a checkpoint stores (None: written before they were stored, or not ours)."""
    names = ckpt.get("class_names") if isinstance(ckpt, dict) else None
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def check_class_names(ckpt, checkpoint, data):
    """The data's classes must be the ones the checkpoint was trained on (same names, same order)."""
    stored = checkpoint_class_names(ckpt)
    current = list(data.class_names)
    if stored is not None and stored != current:
        diff = next((k for k, (a, b) in enumerate(zip(stored, current)) if a != b), min(len(stored), len(current)))
        theirs = stored[diff] if diff < len(stored) else "(none)"
        ours = current[diff] if diff < len(current) else "(none)"
        raise UserError(f"checkpoint {checkpoint} was trained on {len(stored)} classes that differ from the data's "
                        f"{len(current)} (class {diff}: {theirs!r} in the checkpoint, {ours!r} in "
                        f"{getattr(data, 'data_dir', 'the data')}); expected the same class folders")


def build_loss(config, data, num_experts):
    """The loss named by ``loss.type``, given the training counts; refuses a model whose number of
    experts the loss is not written for."""
    criterion = config.init_obj("loss", losses, cls_num_list=data.cls_num_list)
    criterion.check_experts(num_experts, config.source)
    return criterion


def wrap_for_training(net, runtime, config):
    """The network on its device, wrapped for DataParallel or DDP; with ``trainer.sync_batchnorm``
    under DDP its BatchNorm layers first normalise over the global batch (``model/sync_batchnorm.py``,
    on GPUs and CPUs; parameter names do not change)."""
    if runtime.distributed and config.get("trainer.sync_batchnorm", False):
        net = convert_sync_batchnorm(net, runtime.device)
    return wrap_model(net, runtime)


def build_performance(config):
    """Precision and layout settings of ``trainer`` (one ``Performance`` per process: build it here
    and pass it on); also applies the process-wide backend switches it implies (cuDNN autotuning)."""
    perf = Performance.from_config(config.get("trainer"), config.source)
    perf.configure_backends()
    return perf


@dataclass
class Trained:
    """A trained checkpoint, ready to evaluate: network (eval mode, on its device, in the configured
    layout), its config, its data module, its precision settings, the loaded checkpoint and the
    checkpoint's file (None for a network not loaded from one; caches live beside it)."""
    net: object
    config: ConfigParser
    data: object
    perf: Performance
    checkpoint: dict
    path: object = None


def load_trained(checkpoint, config_path=None, overrides=(), device="cpu"):
    """The whole build chain for a trained checkpoint (test.py, test_train.py, bench scripts)."""
    config, ckpt = resolve_config(config_path, checkpoint, overrides)
    data = build_data(config)
    settle_class_count(config, data)
    check_class_names(ckpt, checkpoint, data)
    net = build_model(config)
    load_model_weights(net, extract_state_dict(ckpt, checkpoint), checkpoint)
    perf = build_performance(config)
    net = perf.apply_layout(net.to(device)).eval()
    if perf.fold_batchnorm:
        net = inference_network(net, data, perf, device)
    return Trained(net, config, data, perf, ckpt, checkpoint)


def inference_network(net, data, perf, device):
    """The network every pass that only reads it runs (``trainer.fold_batchnorm``, default on): a
    copy with batch norm folded into the convolutions (model/fold_batchnorm.py), checked on a probe
    batch; the network itself where nothing folds."""
    size = int(getattr(data, "image_size", 32))
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        folded, _ = folded_copy(net, perf.prepare_input(probe, device))
    except RuntimeError:  # a backbone that does not take 3-channel square images: left as it is
        return net
    return perf.apply_layout(folded)


def read_test_time_config(path):
    """The test-time config as {"test_time": {"type", "args", "seed"}}. A config without ``type``
    (the earlier shape: the aggregation's settings directly under ``test_time``) is read as
    self-supervised aggregation with those settings."""
    raw = read_json(path)
    tt = raw.get("test_time")
    if not isinstance(tt, dict):
        raise UserError(f"config {path}: missing section 'test_time' (is this a training config? "
                        "test_train.py takes a configs/test_time_*.json)")
    if "type" not in tt:
        settings = {k: v for k, v in tt.items() if k != "seed"}
        raw["test_time"] = {"type": DEFAULT_TEST_TIME_METHOD, "args": settings, "seed": tt.get("seed", 1)}
    for key in raw:
        if key not in ("name", "test_time"):
            raise unknown_key_error(path, "", key, ["name", "test_time"])
    for key in raw["test_time"]:
        if key not in ("type", "args", "seed", "validation"):
            raise unknown_key_error(path, "test_time", key, ["type", "args", "seed", "validation"])
    raw["test_time"].setdefault("args", {})
    raw["test_time"].setdefault("seed", 1)
    return raw


def build_test_time_method(path, overrides=()):
    """The test-time method named by ``test_time.type`` of the test-time config ``path`` (built
    with ``test_time.args``, after the command-line ``overrides``), and that config."""
    raw = read_test_time_config(path)
    origins = ConfigParser.apply_overrides(raw, overrides, path)
    config = ConfigParser(raw, source=path, origins=origins)
    check_set_arguments(config, overrides)
    return config.init_obj("test_time", test_time_methods), config
