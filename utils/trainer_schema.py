"""The ``trainer`` section of a training config: every key, its type and its default, in one place.

``trainer_settings(section, source)`` checks a section against this table (an unknown key is a
one-line error naming the nearest known one, a value of the wrong type names the key and what was
expected) and returns every key with its default filled in. The trainer, ``train.py`` and the
precision settings (``utils/performance.py``) read their values from there; the finer checks of a
value that needs the data or the model (the monitored metric, the mixup alpha) stay with the code
that uses it.
"""
from dataclasses import dataclass

from utils.errors import UserError
from utils.known_keys import unknown_key_error

REQUIRED = object()
AUTOCAST_CHOICES = (None, "auto", "bf16", "bfloat16", "fp16", "float16")
SELECT_ON_CHOICES = ("validation", "test", "last")


def _is_int(value, minimum=None):
    return (isinstance(value, int) and not isinstance(value, bool)) and (minimum is None or value >= minimum)


def _is_monitor(value):
    if value == "off":
        return True
    parts = value.split() if isinstance(value, str) else []
    return len(parts) == 2 and parts[0] in ("min", "max")


@dataclass(frozen=True)
class Key:
    default: object
    expected: str  # what the error says was expected
    valid: object  # value -> bool


def _flag(default=False):
    return Key(default, "true or false", lambda v: isinstance(v, bool))


SCHEMA = {
    "epochs": Key(REQUIRED, "an integer >= 0", lambda v: _is_int(v, 0)),
    "save_dir": Key("saved", "a folder path (string)", lambda v: isinstance(v, str) and v != ""),
    "save_period": Key(0, "an integer >= 0 (0 or null: no periodic checkpoints)",
                       lambda v: v is None or _is_int(v, 0)),
    "monitor": Key("max val_accuracy", "'max NAME', 'min NAME' or 'off'", _is_monitor),
    "valid_period": Key(1, "an integer (validate every N epochs; 0: never)", _is_int),
    "log_step": Key(20, "an integer >= 1", lambda v: _is_int(v, 1)),
    "tensorboard": _flag(True),
    "sync_batchnorm": _flag(),
    "autocast": Key(None, "null, \"auto\", \"bf16\" or \"fp16\"", lambda v: v in AUTOCAST_CHOICES),
    "channels_last": _flag(),
    "compile": _flag(),
    "cudnn_benchmark": _flag(),
    "cuda_graph": _flag(),
    "fold_batchnorm": _flag(True),  # evaluation passes only (trainer/build.py:load_trained); training never folds
    # {"alpha": A}; A itself is checked by trainer/mixup.py (Mixup.from_config)
    "mixup": Key(None, "{\"alpha\": A} with A > 0 (e.g. 0.8), or null for no mixup",
                 lambda v: v is None or isinstance(v, dict)),
    "select_on": Key("validation", " or ".join(f'"{c}"' for c in SELECT_ON_CHOICES),
                     lambda v: v in SELECT_ON_CHOICES),
}


def _integral(value):
    """JSON may spell an integer as 2.0; the schema's integers accept that."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def trainer_settings(section, source="config", training=True):
    """Every key of ``SCHEMA`` for the ``trainer`` section ``section`` (a dict, or None for an
    evaluation config without one), defaults filled in. ``training``: keys without a default (the
    epochs) must be present and unknown keys are refused; an evaluation reads the precision keys
    only, and a checkpoint's config may come from the reference release (with its own keys)."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise UserError(f"config {source}: trainer is {section!r}: expected an object of trainer settings")
    unknown = [k for k in section if k not in SCHEMA]
    if unknown and training:
        raise unknown_key_error(source, "trainer", unknown[0], SCHEMA)
    settings = {}
    for name, key in SCHEMA.items():
        if name not in section or (not training and name == "epochs"):
            if key.default is REQUIRED and training:
                raise UserError(f"config {source}: trainer.{name} is missing: expected {key.expected}")
            settings[name] = None if key.default is REQUIRED else key.default
            continue
        value = _integral(section[name])
        if not key.valid(value):
            raise UserError(f"config {source}: trainer.{name} is {section[name]!r}: expected {key.expected}")
        settings[name] = value
    if settings["save_period"] is None:
        settings["save_period"] = 0
    return settings
