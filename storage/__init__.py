"""Where things live: location strings resolved to fsspec filesystems, Drive mounting, the run store."""

from .location import Location, resolve_location
from .runstore import RunStore, StateInfo

__all__ = ["Location", "resolve_location", "RunStore", "StateInfo"]
