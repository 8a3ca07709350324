"""Evaluation shared by test.py and test_train.py: load a trained run, compute every test image's
expert logits once, and derive each test distribution's figures from them."""
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

import data_loader
import model as models
from model.metric import accuracy_from_confusion, confusion_matrix
from utils.checkpoint import extract_state_dict, load_checkpoint, load_model_weights
from utils.errors import UserError
from utils.parse_config import ConfigParser, read_json
from utils.performance import Performance


def config_from_checkpoint(ckpt):
    """Our checkpoints hold the config dict; the release's hold an inert stand-in of its
    ConfigParser whose pickled state carries the dict under ``_config``."""
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if isinstance(config, dict):
        return config
    state = getattr(config, "state", None)
    if isinstance(state, dict) and isinstance(state.get("_config"), dict):
        return state["_config"]
    return None


def load_trained(checkpoint_path, config_path=None, overrides=(), device="cpu"):
    """(model in eval mode on ``device``, ConfigParser, data module, checkpoint dict)."""
    ckpt = load_checkpoint(checkpoint_path)
    if config_path is not None:
        config, source = read_json(config_path), config_path
    else:
        config, source = config_from_checkpoint(ckpt), checkpoint_path
        if config is None:
            raise UserError(f"checkpoint {checkpoint_path} holds no usable config; give the training config with -c")
    ConfigParser.apply_overrides(config, overrides, source)
    cfg = ConfigParser(config, source=source)
    for section in ("arch", "data_loader"):
        cfg[section]  # noqa: B018 - a missing section is a UserError naming it
    data = cfg.init_obj("data_loader", data_loader)
    net = cfg.init_obj("arch", models)
    load_model_weights(net, extract_state_dict(ckpt, checkpoint_path), checkpoint_path)
    perf = Performance.from_config(config.get("trainer"), source)
    net = perf.prepare_model(net.to(device)).eval()
    return net, cfg, data, ckpt


@torch.inference_mode()
def collect_expert_logits(net, loader, device, perf=None, desc="test images"):
    """Every image's per-expert logits [N, E, C] (float32, CPU) and targets [N], in loader order."""
    perf = perf or Performance()
    logits, targets = [], []
    for x, y in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        with perf.autocast_context(device):
            out = net(perf.prepare_input(x, device))
        logits.append(out["logits"].float().cpu())
        targets.append(y.cpu())  # the tensor pipeline yields targets on the device
    return torch.cat(logits), torch.cat(targets)


def distribution_metrics(preds, targets, distributions, num_classes, shot_masks):
    """One confusion matrix (``torch.bincount``) per distribution over index subsets of the test set.

    Returns ordered ``{name: {"num_images", "top1", "many", "medium", "few"}}`` (absent groups omitted).
    """
    out = OrderedDict()
    for name, idx in distributions.items():
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        cm = confusion_matrix(preds[idx], targets[idx], num_classes)
        out[name] = {"num_images": int(idx.numel()), **accuracy_from_confusion(cm, shot_masks)}
    return out
