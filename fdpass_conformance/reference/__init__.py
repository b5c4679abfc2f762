"""Reference implementations of the three proxy strategies, correct under faults."""

from .master import MasterProxy, NoLiveWorkerError
from .shared_listener import ForkSharedProxy, ReusePortProxy

__all__ = ["ForkSharedProxy", "MasterProxy", "NoLiveWorkerError", "ReusePortProxy"]
