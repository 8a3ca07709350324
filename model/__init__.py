"""Networks chosen by the config's ``arch.type``."""
from model.model import ResNet32Model, ResNet50Model, ResNet152Model, ResNeXt50Model

__all__ = ["ResNet32Model", "ResNeXt50Model", "ResNet50Model", "ResNet152Model"]
