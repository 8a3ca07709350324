"""JSON configs: reading, command-line overrides, and building objects by `type`.

A config section such as ``{"type": "SGD", "args": {"lr": 0.1}}`` is turned into an object by
``config.init_obj("optimizer", torch.optim, params)``: the class named by ``type`` is looked up in
the given module(s) and called with ``args``. Code may add arguments that the config cannot hold
(parameters, class counts) but may not silently replace a key the config sets.
"""
import importlib
import inspect
import json
import math
import re
import typing
from pathlib import Path

from utils.errors import UserError, shown
from utils.known_keys import check_arguments, nearest
from utils.safe_write import open_readable
from utils.trainer_schema import SCHEMA as TRAINER_SCHEMA

SEED_MAX = 2**64 - 1
MAX_DEPTH = 64  # nesting of a config file; deeper is no config (and would exhaust Python's recursion)


def read_json(path):
    """Read a JSON file; errors name the file (and line/column for syntax errors)."""
    path = Path(path)
    try:
        with open_readable(path) as f:  # a FIFO or device (/dev/zero) is refused, never read from
            text = f.read().decode("utf-8-sig")  # a byte-order mark (as Windows editors write) is allowed
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}")
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}")
    except _DuplicateKey as e:
        raise UserError(f"{path}: the key {shown(e.key)} appears twice in one object; expected each key once (JSON "
                        "would silently keep the last)")
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply; expected a config (at most {MAX_DEPTH} levels)")
    if _depth(value) > MAX_DEPTH:
        raise UserError(f"{path}: JSON nested more than {MAX_DEPTH} levels deep; expected a config")
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object at the top level, got {type(value).__name__}")
    return value


class _DuplicateKey(Exception):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs):
    """A JSON object as a dict, refusing a key given twice (an edited config's second "epochs" would
    otherwise win or lose silently)."""
    value = {}
    for key, item in pairs:
        if key in value:
            raise _DuplicateKey(key)
        value[key] = item
    return value


def _depth(value):
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:
            children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
            stack.extend((child, depth + 1) for child in children)
    return deepest


def get_by_path(config, key_path, default=None):
    node = config
    for key in key_path.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def set_by_path(config, key_path, value, source="--set", must_exist=True):
    """Set ``a.b.c`` in a nested dict. Unknown paths are refused (a typo must not pass silently),
    except an argument of a built section (``SECTION.args.KEY`` where SECTION has a ``type``): it
    may be added, and is checked against the signature of that class when the section is built;
    and a key of the trainer schema (``trainer.mixup``), checked by the schema."""
    keys = key_path.split(".")
    node = config
    if must_exist and len(keys) == 3 and keys[1] == "args" and isinstance(config.get(keys[0]), dict) \
            and "type" in config[keys[0]]:
        if not isinstance(config[keys[0]].get("args"), dict):
            config[keys[0]]["args"] = {}
        must_exist = False
    if must_exist and len(keys) == 2 and keys[0] == "trainer" and keys[1] in TRAINER_SCHEMA \
            and isinstance(config.get("trainer"), dict):
        must_exist = False
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node, dict) or key not in node:
            if must_exist:
                raise UserError(f"{source}: unknown config key '{'.'.join(keys[:i + 1])}' in '{key_path}'"
                                f"{_did_you_mean(node, keys[:i], key)}")
            node[key] = {}
        node = node[key]
    if not isinstance(node, dict) or (must_exist and keys[-1] not in node):
        raise UserError(f"{source}: unknown config key '{key_path}'{_did_you_mean(node, keys[:-1], keys[-1])}")
    node[keys[-1]] = value


def _did_you_mean(node, parents, key):
    close = nearest(key, node) if isinstance(node, dict) else None
    return f"; did you mean {'.'.join([*parents, close])}?" if close else ""


def parse_set_expression(expr):
    """``KEY.PATH=VALUE``: VALUE is parsed as JSON, falling back to a plain string."""
    if "=" not in expr:
        raise UserError(f"--set {expr!r}: expected KEY.PATH=VALUE")
    key, raw = expr.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {expr!r}: empty key path")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


class ConfigParser:
    """A resolved config (plain dict) and the file it came from (named in every error)."""

    def __init__(self, config, source="config", origins=None):
        self.config = config
        self.source = str(source)
        self.origins = dict(origins or {})  # key path -> the command-line option that set it

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path, overrides=(), **kw):
        config = read_json(path)
        origins = cls.apply_overrides(config, overrides, str(path))
        return cls(config, source=path, origins=origins, **kw)

    @staticmethod
    def apply_overrides(config, overrides, source):
        """overrides: iterable of (key_path, value, option_name). A None value from a shortcut option
        (an argparse option left out) is skipped; from ``--set`` it is JSON null and is applied.
        Returns {key path: option} of those applied (``origins`` of a ConfigParser)."""
        applied = {}
        for key_path, value, option in overrides:
            must_exist = option == "--set"
            if value is None and not must_exist:
                continue
            set_by_path(config, key_path, value, source=f"{option} (config {source})", must_exist=must_exist)
            applied[key_path] = option
        return applied

    # -- access ---------------------------------------------------------------------------------
    def __getitem__(self, name):
        if name not in self.config:
            raise UserError(f"config {self.source}: missing section '{name}'")
        return self.config[name]

    def __contains__(self, name):
        return name in self.config

    def get(self, key_path, default=None):
        return get_by_path(self.config, key_path, default)

    def get_int(self, key_path, default=None, minimum=None, maximum=None):
        """An integer setting; anything else ("ten", 2.5, true, out of bounds) is a UserError naming the key."""
        value = get_by_path(self.config, key_path, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum) \
                or (maximum is not None and value > maximum):
            bound = f" >= {minimum}" if minimum is not None else ""
            bound += f"{' and' if bound else ''} <= {maximum}" if maximum is not None else ""
            raise UserError(f"config {self.source}: {key_path} is {shown(value)}: expected an integer{bound}"
                            + (f" (set by {self.origins[key_path]})" if key_path in self.origins else ""))
        return value

    def get_seed(self, key_path, default=None):
        """A seed: an integer in 0 .. 2**64 - 1 (what the random generators take)."""
        return self.get_int(key_path, default, minimum=0, maximum=SEED_MAX)

    # -- building objects -----------------------------------------------------------------------
    def _lookup(self, name, modules):
        section = self[name]
        if not isinstance(section, dict) or "type" not in section:
            raise UserError(f"config {self.source}: section '{name}' needs a \"type\" and \"args\"")
        type_name = section["type"]
        modules = modules if isinstance(modules, (list, tuple)) else [modules]
        if isinstance(type_name, str) and "." in type_name:
            return self._lookup_dotted(name, type_name, modules), section
        for module in modules:
            obj = getattr(module, type_name, None) if isinstance(type_name, str) else None
            if obj is not None and callable(obj) and not type_name.startswith("_"):
                return obj, section
        known = sorted({n for m in modules for n in getattr(m, "__all__", [])})
        hint = f"; expected one of: {', '.join(known)}" if known else ""
        raise UserError(f"config {self.source}: {name}.type {type_name!r} is not a known {name} type{hint}")

    def _lookup_dotted(self, name, type_name, modules):
        """``package.module.Class``: a class kept outside the framework; it must honour the contract
        of the package the section builds from (its ``__contract__``, set by utils/registry.py)."""
        module_name, _, class_name = type_name.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError as e:
            raise UserError(f"config {self.source}: {name}.type {type_name!r}: cannot import {module_name} ({e})")
        if not inspect.isclass(obj):
            raise UserError(f"config {self.source}: {name}.type {type_name!r}: {module_name} has no class {class_name}")
        contracts = [m.__contract__ for m in modules if getattr(m, "__contract__", None) is not None]
        if contracts and not any(issubclass(obj, c) for c in contracts):
            names = " or ".join(f"{c.__module__}.{c.__name__}" for c in contracts)
            raise UserError(f"config {self.source}: {name}.type {type_name!r} is not a {names} (the contract of a "
                            f"{name} type)")
        return obj

    def init_obj(self, name, modules, *args, **kwargs):
        """Build ``section.type(*args, **section.args, **kwargs)``; kwargs may not override config keys."""
        cls, section = self._lookup(name, modules)
        config_args = dict(section.get("args") or {})
        clash = set(config_args) & set(kwargs)
        if clash:
            raise ValueError(f"init_obj('{name}'): code arguments {sorted(clash)} would override config keys")
        check_arguments(self.source, name, cls, section.get("args") or {})
        config_args.update(kwargs)
        try:
            signature = inspect.signature(cls)
            signature.bind(*args, **config_args)
        except TypeError as e:
            raise UserError(f"config {self.source}: {name}.args do not fit {cls.__name__}: {e}")
        except ValueError:  # builtins without a signature
            signature = None
        if signature is not None:
            self._check_scalar_types(name, cls, signature, section.get("args") or {})
        try:
            return cls(*args, **config_args)
        except UserError:
            raise
        except (TypeError, ValueError) as e:
            given = [f"{key} set by {option}" for key, option in self.origins.items()
                     if key.startswith(f"{name}.args.")]
            where = f" ({', '.join(given)})" if given else ""
            raise UserError(f"config {self.source}: {name}.args rejected by {cls.__name__}: {e}{where}")

    def _check_scalar_types(self, name, cls, signature, config_args):
        """A string where the constructor's default is a number or a boolean ("lr": "fast") is
        refused with the key and the expected type, instead of failing deep inside the class; an
        argument annotated to take a string too (``bias: bool | str = True``) is left to the class."""
        defaults = {k: p.default for k, p in signature.parameters.items()}
        takes_str = {k for k, p in signature.parameters.items() if _admits_str(p.annotation)}
        for base in cls.__mro__[1:] if isinstance(cls, type) else ():  # arguments passed on via **kwargs
            if "__init__" in vars(base) and base is not object:
                try:
                    params = inspect.signature(base.__init__).parameters
                except (TypeError, ValueError):
                    continue
                for k, p in params.items():
                    defaults.setdefault(k, p.default)
                    if _admits_str(p.annotation):
                        takes_str.add(k)
        for key, value in config_args.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"config {self.source}: {name}.args.{key} is {value!r}: expected a finite number")
            if key not in defaults or key in takes_str or not isinstance(value, str):
                continue
            default = defaults[key]
            if isinstance(default, bool):
                expected = "true or false"
            elif isinstance(default, (int, float)):
                expected = "a number"
            else:
                continue
            raise UserError(f"config {self.source}: {name}.args.{key} is {value!r}: expected {expected} "
                            f"({cls.__name__}'s default is {default!r})")


def _admits_str(annotation):
    """Whether a parameter's annotation takes a string (``str``, ``bool | str``, ``"bool | str"``)."""
    if annotation is inspect.Parameter.empty:
        return False
    if annotation is str:
        return True
    if isinstance(annotation, str):
        return "str" in re.split(r"[\s|\[\],]+", annotation)
    return str in typing.get_args(annotation)
