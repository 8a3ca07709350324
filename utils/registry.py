"""Find the classes a config's ``type`` may name: every public class defined in a package's modules
that honours the package's contract (a subclass of its base class). Defining the class in its
package is enough; there is no second, hand-kept list to update.

    # data_loader/__init__.py
    __all__ = export_package(__name__, globals(), LTDataModule)

Module-level aliases (``ImbalanceCIFAR100DataLoader = CIFAR100LTDataModule``, the release's names)
are exported under their own name too.
"""
import importlib
import inspect
import pkgutil
import sys


def export_package(package_name, namespace, base):
    """Import every module of the package and put its public subclasses of ``base`` (and their
    aliases) into ``namespace``; returns the sorted names (the package's ``__all__``)."""
    package = sys.modules[package_name]
    namespace["__contract__"] = base  # a dotted config type outside the package must subclass it too
    names = set()
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package_name}.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or not inspect.isclass(obj) or not issubclass(obj, base) or obj is base:
                continue
            if not obj.__module__.startswith(package_name + ".") or inspect.isabstract(obj):
                continue  # imported from elsewhere (e.g. the base class), or a contract, not a usable type
            if name in namespace and namespace[name] is not obj:
                raise ImportError(f"{package_name}: two classes named {name} ({namespace[name].__module__} and "
                                  f"{obj.__module__}); config types must be unique")
            namespace[name] = obj
            names.add(name)
    return sorted(names)
