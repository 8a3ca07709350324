"""Unknown config keys: a typo (``trainer.epochz``, ``loss.args.tua``) is a one-line error naming
the nearest known key, never a setting silently ignored.

``check_config_keys`` checks the top level and every section of a training config; the keys of an
``args`` section are the parameters of the class its ``type`` names (``known_arguments``).
"""
import difflib
import inspect

from utils.errors import UserError

# Top-level keys of a training config and the keys a "type"/"args" section may hold besides those.
TOP_LEVEL = ("name", "seed", "arch", "data_loader", "loss", "optimizer", "lr_scheduler", "trainer")
SECTION_EXTRAS = {"arch": ("pretrained",), "optimizer": ("backbone_lr",)}


def nearest(key, known):
    """The known key closest in spelling to ``key`` (None when nothing is close)."""
    match = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_error(source, where, key, known, owner=None):
    """UserError for ``where.key`` (``where``: a dotted section path, or "" for the top level;
    ``owner``: the class whose arguments ``known`` are)."""
    path = f"{where}.{key}" if where else str(key)
    of = f" (not an argument of {owner.__name__})" if owner is not None else ""
    close = nearest(key, known)
    if close:
        hint = f"did you mean {f'{where}.{close}' if where else close}?"
    elif known:
        hint = f"expected one of: {', '.join(sorted(map(str, known)))}"
    else:
        hint = f"{owner.__name__} takes no arguments" if owner is not None else "expected no keys here"
    return UserError(f"config {source}: unknown key {path!r}{of}; {hint}")


def known_arguments(cls):
    """The keyword arguments ``cls`` accepts, following ``**kwargs`` through the ``__init__`` of its
    base classes; None when they cannot be known (a ``**kwargs`` that goes nowhere inspectable, or
    a builtin without a signature): such a class checks its own arguments."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return names
    if not inspect.isclass(cls):
        return None
    # **kwargs passed on to the base classes: follow the chain until an __init__ without **kwargs.
    for base in cls.__mro__[1:]:
        if base is object:
            return None
        if "__init__" not in vars(base):
            continue
        try:
            base_params = inspect.signature(base.__init__).parameters
        except (TypeError, ValueError):
            return None
        names |= {n for n, p in base_params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                  p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in base_params.values()):
            return names
    return None


def check_arguments(source, section, cls, args):
    """Every key of ``section.args`` must be an argument of ``cls``."""
    known = known_arguments(cls)
    if known is None:
        return
    for key in args:
        if key not in known:
            raise unknown_key_error(source, f"{section}.args", key, sorted(known), owner=cls)


def check_config_keys(config, source, top_level=TOP_LEVEL):
    """The top-level keys and the keys of every ``type``/``args`` section (not their ``args``,
    which ``ConfigParser.init_obj`` checks against the class)."""
    for key in config:
        if key not in top_level:
            raise unknown_key_error(source, "", key, top_level)
    for name, section in config.items():
        if name == "trainer" or not isinstance(section, dict):
            continue
        allowed = ("type", "args", *SECTION_EXTRAS.get(name, ()))
        for key in section:
            if key not in allowed:
                raise unknown_key_error(source, name, key, allowed)
