"""Initialise a multi-expert backbone from one single-network ImageNet ResNet (docs/methods.md#recipes, Places-LT).

The stem, layer1 and layer2 are copied once; layer3 and layer4 are copied into every expert
(``layer3.*`` -> ``layer3s.{k}.*``); the network's own classifier (``fc.*``) is skipped and the
experts' classifiers stay random. Accepted files: torchvision's ``resnet152`` state dict, a plain
``conv1/bn1/layer1..4`` state dict, either one under ``state_dict`` or with a ``module.`` prefix.
The file is read with ``utils.checkpoint.load_checkpoint`` (nothing in it is executed).
"""
import logging

from utils.checkpoint import extract_state_dict, load_checkpoint
from utils.errors import UserError

SHARED = ("conv1.", "bn1.", "layer1.", "layer2.")
PER_EXPERT = {"layer3.": "layer3s", "layer4.": "layer4s"}
SKIPPED = ("fc.",)


def expand_single_network(state, num_experts, path="checkpoint"):
    """Single-network names -> multi-expert names; returns (new state dict, skipped keys)."""
    out, skipped, unknown = {}, [], []
    for key, value in state.items():
        if key.startswith(SKIPPED):
            skipped.append(key)
        elif key.startswith(SHARED):
            out[key] = value
        elif key.startswith(tuple(PER_EXPERT)):
            prefix, rest = key.split(".", 1)
            for k in range(num_experts):
                out[f"{PER_EXPERT[prefix + '.']}.{k}.{rest}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise UserError(f"pretrained weights {path}: {len(unknown)} unexpected key(s) (e.g. {unknown[0]}); "
                        "expected a single ImageNet ResNet with conv1, bn1, layer1..layer4 (and optionally fc)")
    return out, skipped


def load_single_network_weights(backbone, path):
    """Copy a single ImageNet ResNet into ``backbone`` (an ``ExpertResNet``); returns a report dict."""
    state = extract_state_dict(load_checkpoint(path), path)
    expanded, skipped = expand_single_network(state, backbone.num_experts, path)
    own = backbone.state_dict()
    targets = [k for k in own if not k.startswith("linears.")]
    missing = [k for k in targets if k not in expanded]
    if missing:
        raise UserError(f"pretrained weights {path}: {len(missing)} backbone tensor(s) missing (e.g. "
                        f"{_single_name(missing[0])}); expected conv1, bn1, layer1..layer4 of the same depth")
    extra = [k for k in expanded if k not in own]
    wrong = [k for k in targets if tuple(expanded[k].shape) != tuple(own[k].shape)]
    if extra or wrong:
        k = (extra or wrong)[0]
        detail = (f"{_single_name(k)} has no counterpart" if extra else
                  f"{_single_name(k)}: {tuple(expanded[k].shape)} vs {tuple(own[k].shape)} in the model")
        raise UserError(f"pretrained weights {path} do not fit the model ({len(extra) + len(wrong)} tensor(s), e.g. "
                        f"{detail}); use the same depth with reduce_dimension false")
    backbone.load_state_dict({k: expanded[k] for k in targets}, strict=False)
    report = {"path": str(path), "loaded": len(state) - len(skipped), "copied": len(targets), "skipped": skipped,
              "random": [k for k in own if k.startswith("linears.")]}
    logging.getLogger("train").info(
        "pretrained %s: loaded %d tensors (conv1, bn1, layer1, layer2; layer3 and layer4 copied into each of %d "
        "experts); skipped %s; classifiers (%s) stay random", path, report["loaded"], backbone.num_experts,
        ", ".join(skipped) or "nothing", ", ".join(report["random"]))
    return report


def _single_name(key):
    """``layer3s.2.0.conv1.weight`` -> ``layer3.0.conv1.weight`` (the name in the pretrained file)."""
    for prefix, multi in PER_EXPERT.items():
        if key.startswith(multi + "."):
            return prefix + key.split(".", 2)[2]
    return key


def apply_config_pretrained(config, model):
    """Fresh runs with ``arch.pretrained`` start from that single network (resumed runs and the
    evaluation scripts take every weight from their checkpoint instead)."""
    path = config.get("arch.pretrained")
    if not path:
        return None
    from model.resnet_imagenet import ExpertResNet
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ExpertResNet):
        raise UserError(f"config {config.source}: arch.pretrained needs an ImageNet-scale model (ResNeXt50Model, "
                        f"ResNet50Model, ResNet152Model), not {config['arch'].get('type')}")
    return load_single_network_weights(backbone, path)
