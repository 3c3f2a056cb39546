"""The nucleus network, its post-processing and checkpoints."""
