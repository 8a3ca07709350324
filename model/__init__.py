"""Networks, chosen by the config's ``arch.type`` (contract: base/base_model.py). Every
``ExpertModel`` defined in a module of this package is available by its class name."""
from base.base_model import ExpertModel
from utils.registry import export_package

__all__ = export_package(__name__, globals(), ExpertModel)
