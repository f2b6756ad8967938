"""The configuration campaign: a space's operators profiled under every deployment
configuration of a device (``devices/deployment.py``), one LUT table per configuration.

Each configuration is a device spec of its own, so this is the ordinary campaign run once per
configuration: the same measurement engine, resume (entries already in a configuration's
table are not timed again) and progress. One artifact cache serves them all, so a model is
converted once for every configuration that runs the same artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devices.artifacts import ArtifactCache
from devices.deployment import DeploymentSpace
from hurricane.space import SearchSpace
from profilers.campaign import CampaignReport, profile


def profile_configurations(
    space: SearchSpace,
    deployment: DeploymentSpace,
    db_path: str | Path,
    cache: ArtifactCache | None = None,
    progress: bool = True,
    **kw: Any,
) -> dict[str, CampaignReport]:
    """Profile ``space`` under each configuration; configuration spec name -> report."""
    cache = cache or ArtifactCache()
    return {
        spec.name: profile(space, spec, db_path, cache=cache, progress=progress, **kw)
        for _, spec in deployment.configurations()
    }
