"""Base classes: the data-module interface and the epoch loop."""
