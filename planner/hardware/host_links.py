"""The link between a GPU and its host's memory, for activation offload: the bandwidth per
direction that copies of offloaded activations get (device to host in forward, host to
device in backward).

A profile names its link type (`host_link`: pcie3-x16, pcie4-x16, pcie5-x16,
nvlink-c2c; without one, the default of profiles/host_links.json, the slowest common
link) and may override the rate with a measured one (`host_link_gbps` with
`host_link_source`). The table's rates are the links' nominal data rates per direction,
each with its source; pinned copies reach somewhat less in practice, so a profile that
needs it should carry a measured figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from planner.errors import ProfileError
from planner.hardware.gpu_profile import GpuProfile
from planner.hardware.profiles import profiles_dir


@dataclass(frozen=True)
class HostLink:
    name: str  # the link type, e.g. "pcie4-x16"
    gbps: float  # GB/s per direction
    source: str  # where the figure comes from

    def seconds(self, nbytes: int) -> float:
        """Time to copy `nbytes` one way at the link's rate."""
        return nbytes / (self.gbps * 1e9)


def links_path() -> Path:
    return profiles_dir() / "host_links.json"


@lru_cache(maxsize=4)
def load_links(path: Path | None = None) -> tuple[str, dict[str, HostLink]]:
    """(default link name, link name -> HostLink) from profiles/host_links.json."""
    path = path or links_path()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        default, entries = document["default"], document["links"]
        links = {name: HostLink(name, float(entry["gbps"]), str(entry["source"])) for name, entry in entries.items()}
    except OSError as error:
        raise ProfileError(f"cannot read {path}: {error.strerror or error}") from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ProfileError(f"{path}: expected {{'default': NAME, 'links': {{NAME: {{'gbps': N, 'source': TEXT}}}}}}: "
                           f"{type(error).__name__}: {error}") from error
    if default not in links or any(link.gbps <= 0 for link in links.values()):
        raise ProfileError(f"{path}: the default {default!r} must be one of the links, every gbps > 0")
    return default, links


def link_names() -> tuple[str, ...]:
    return tuple(load_links()[1])


def host_link(profile: GpuProfile) -> HostLink:
    """The profile's host link: its measured rate where it has one, else its link type's
    nominal rate (the table's default type where it names none)."""
    default, links = load_links()
    name = profile.host_link or default
    if profile.host_link_gbps is not None:
        return HostLink(name, profile.host_link_gbps, profile.host_link_source or "")
    if name not in links:
        raise ProfileError(f"{profile.name}: host_link {name!r} is not one of {', '.join(links)}")
    return links[name]
