"""Data modules, chosen by the config's ``data_loader.type`` (contract: base/base_data_module.py).
Every ``LTDataModule`` defined in a module of this package is available by its class name, and by
the earlier names kept beside it (``CIFAR100LTDataLoader``, the release's ``ImbalanceCIFAR100DataLoader``)."""
from base.base_data_module import LTDataModule
from utils.registry import export_package

__all__ = export_package(__name__, globals(), LTDataModule)
