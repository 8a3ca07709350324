"""List files and list tools for the list-based datasets (ImageNet-LT, Places-LT, iNaturalist 2018)."""
