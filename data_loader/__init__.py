"""Data modules, chosen by the config's ``data_loader.type``."""
from data_loader.cifar_lt import (CIFAR10LTDataLoader, CIFAR100LTDataLoader, ImbalanceCIFAR10DataLoader,
                                  ImbalanceCIFAR100DataLoader)
from data_loader.digits_lt import DigitsLTDataLoader
from data_loader.list_lt import ImageNetLTDataLoader, INaturalistDataLoader, ListLTDataModule, PlacesLTDataLoader

__all__ = ["CIFAR10LTDataLoader", "CIFAR100LTDataLoader", "DigitsLTDataLoader", "ImbalanceCIFAR10DataLoader",
           "ImbalanceCIFAR100DataLoader", "ImageNetLTDataLoader", "PlacesLTDataLoader", "INaturalistDataLoader",
           "ListLTDataModule"]
