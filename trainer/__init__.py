"""LEARN twin towers, losses, data, evaluation, offline and incremental training."""
