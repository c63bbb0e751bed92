"""Where things live: location strings resolved to fsspec filesystems, Drive mounting, the run store."""

from .location import Location, ensure_local_folder, resolve_location, resolve_storage
from .runstore import RunStore, StateInfo

__all__ = ["Location", "ensure_local_folder", "resolve_location", "resolve_storage", "RunStore", "StateInfo"]
