"""Networks chosen by the config's ``arch.type``."""
from model.model import ResNet32Model

__all__ = ["ResNet32Model"]
