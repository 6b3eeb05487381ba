"""evfl: federated, incremental learning of partitioned early-exit networks for EV charging."""

__version__ = "0.1.0"
