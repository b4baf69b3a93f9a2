"""fedsim: a federated-learning simulator for researchers."""

__version__ = "0.1.0"
