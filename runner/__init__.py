"""Running a trainer backend: its process group, its events, checkpoint sync and the deadline."""
