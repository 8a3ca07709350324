"""Find the classes a config's ``type`` may name: every public class defined in a package's modules
that honours the package's contract (a subclass of its base class). Defining the class in its
package is enough; there is no second, hand-kept list to update.

    # data_loader/__init__.py
    __all__ = export_package(__name__, globals(), LTDataModule)

The package's modules are read as text (``ast``), not imported: a module is imported only when a
type it defines is named (``data_loader.CIFAR100LTDataModule`` or a config's ``type``), so a broken
file stops only the configs that name one of its types. Module-level aliases
(``ImbalanceCIFAR100DataLoader = CIFAR100LTDataModule``, the release's names) are types too.

``is_project_module`` tells whether a dotted ``type`` names a module of this project, without
importing anything (a config read from a checkpoint may name no other module).
"""
import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class _ClassInfo:
    module: str
    bases: list
    abstract: set = field(default_factory=set)  # abstract methods declared in the class itself
    concrete: set = field(default_factory=set)  # methods it defines without @abstractmethod


def _last_name(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_abstract(fn):
    return any(_last_name(d) == "abstractmethod" for d in fn.decorator_list)


def _read_module(path, module_name, classes, aliases):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            info = _ClassInfo(module_name, [b for b in map(_last_name, node.bases) if b])
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    (info.abstract if _is_abstract(item) else info.concrete).add(item.name)
            classes.setdefault(node.name, []).append(info)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    aliases.setdefault(target.id, []).append((module_name, node.value.id))


class PackageIndex:
    """The config types of one package, found by reading its modules' source."""

    def __init__(self, package_name, path, base):
        self.package_name, self.base = package_name, base
        self.broken = {}  # file -> module name, for the modules that could not be read
        classes, aliases = {}, {}
        for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
            if info.name.startswith("_") or info.ispkg:
                continue
            file = Path(info.module_finder.path) / f"{info.name}.py"
            try:
                _read_module(file, f"{package_name}.{info.name}", classes, aliases)
            except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
                self.broken[file] = f"{package_name}.{info.name}"
        self.modules = {}  # type name -> modules that define it (more than one is an error on lookup)
        self.abstract = set()
        self.unverified = set()  # classes of unreadable modules (naming one reports why it cannot be loaded)
        missing = {}  # class name -> abstract methods not implemented (None: not a contract class)
        base_missing = set(getattr(base, "__abstractmethods__", ()))

        def unimplemented(name, seen=()):
            if name == base.__name__:
                return base_missing
            if name not in classes or name in seen:
                return None
            if name not in missing:
                info = classes[name][0]
                inherited = [unimplemented(b, seen + (name,)) for b in info.bases]
                inherited = [m for m in inherited if m is not None]
                missing[name] = (set().union(*inherited) - info.concrete) | info.abstract if inherited else None
            return missing[name]

        for name, infos in classes.items():
            todo = unimplemented(name)
            if todo is not None:
                if todo:
                    self.abstract.add(name)
                if not name.startswith("_"):
                    self.modules[name] = [i.module for i in infos]
        for file, module in self.broken.items():  # its classes, by a text search: naming one says why it fails
            try:
                text = file.read_text(errors="replace")
            except OSError:
                continue
            for name in re.findall(r"^class\s+([A-Za-z]\w*)", text, re.MULTILINE):
                self.modules.setdefault(name, []).append(module)
                self.unverified.add(name)
        for name, targets in aliases.items():
            for module, target in targets:
                if not name.startswith("_") and target in self.modules and target not in self.abstract:
                    self.modules.setdefault(name, []).append(module)

    def names(self):
        return sorted(n for n in self.modules if n not in self.abstract | self.unverified)

    def load(self, name):
        """The class ``name``, importing only the module that defines it."""
        modules = sorted(set(self.modules[name]))
        if len(modules) > 1:
            raise UserError(f"{self.package_name}: two types named {name} ({' and '.join(modules)}); "
                            "config types must be unique")
        try:
            module = importlib.import_module(modules[0])
        except UserError:
            raise
        except Exception as e:  # a broken module: one line naming it, not a traceback
            where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
            raise UserError(f"{self.package_name}.{name}: module {modules[0]} cannot be imported{where}: "
                            f"{type(e).__name__}: {e}") from e
        obj = getattr(module, name, None)
        if (not inspect.isclass(obj) or not issubclass(obj, self.base) or obj is self.base
                or inspect.isabstract(obj) or not obj.__module__.startswith(self.package_name + ".")):
            raise AttributeError(f"module {self.package_name!r} has no config type {name!r}")
        return obj


def export_package(package_name, namespace, base):
    """Make the package's config types attributes of the package, each imported on first use (a
    module ``__getattr__``), and return their sorted names (the package's ``__all__``)."""
    index = PackageIndex(package_name, sys.modules[package_name].__path__, base)
    namespace["__contract__"] = base  # a dotted config type outside the package must subclass it too
    namespace["__registry__"] = index

    def __getattr__(name):
        if name not in index.modules or name in index.abstract:
            raise AttributeError(f"module {package_name!r} has no attribute {name!r}")
        obj = index.load(name)
        namespace[name] = obj  # later look-ups are plain attribute reads
        return obj

    namespace["__getattr__"] = __getattr__
    return index.names()


def is_project_module(dotted):
    """Whether the module part of ``package.module.Class`` lies in this project's folder. Only the
    top-level package is located (``find_spec`` of a top-level name runs no code)."""
    top = dotted.split(".", 1)[0]
    if not top.isidentifier():
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
        locations.append(spec.origin)
    return bool(locations) and all(Path(p).resolve().is_relative_to(PROJECT_ROOT) for p in locations)
