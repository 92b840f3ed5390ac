"""memscore: which training examples a network memorizes, which influence which test
predictions, and how much a language model exposes a planted secret."""

__version__ = "0.1.0"
