"""Stable Prefect artifact keys, so the UI keeps each project's history under one name per kind."""

from __future__ import annotations

import re


def artifact_key(kind: str, project: str) -> str:
    """`<kind>-<project>` in the only characters Prefect allows: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", project.lower()).strip("-") or "run"
    return f"{kind}-{slug}"[:100]
