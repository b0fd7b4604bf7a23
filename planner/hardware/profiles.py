"""Hardware profiles: JSON files in `profiles/gpus/`, loaded strictly into GpuProfile.

The folder is found beside the `planner` package, which works from a checkout and from an
installed wheel alike (pyproject installs `profiles` as a top-level data package next to
`planner`); `$LOFI_PROFILES` overrides it. The `cpu` profile's memory is the RAM that is
available when the planner runs, read here at run time (see profiles/README.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import planner
from planner.errors import ProfileError
from planner.hardware.gpu_profile import GpuProfile
from planner.strict_json import Node, read_json_document

PROFILES_ENV = "LOFI_PROFILES"
DEFAULT_GPU = "v100-32gb"  # the target when none is given and none is found (a 32 GB training GPU)
AVAILABLE = "available"  # the cpu profile's memory_bytes: read the available RAM at run time

_FIELDS = {field.name: field for field in dataclasses.fields(GpuProfile)}
_REQUIRED = {
    name
    for name, field in _FIELDS.items()
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
}
_NUMBERS = ("fp32_tflops", "fp16_tflops", "bandwidth_gbps")
_OPTIONAL_NUMBERS = ("bf16_tflops", "hourly_usd", "host_link_gbps")
_OPTIONAL_BYTES = ("cuda_context_bytes", "workspace_bytes")
_KINDS = ("gpu", "cpu")


def profiles_dir() -> Path:
    """The `profiles/` folder: `$LOFI_PROFILES` if set, else the one beside `planner/`."""
    override = os.environ.get(PROFILES_ENV)
    if override:
        return Path(override).expanduser()
    return Path(planner.__file__).resolve().parent.parent / "profiles"


def gpus_dir(root: Path | None = None) -> Path:
    return (root if root is not None else profiles_dir()) / "gpus"


def available_ram_bytes() -> int:
    """RAM available to a new process now: MemAvailable from /proc/meminfo (Linux), else
    the free physical pages from os.sysconf."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError) as error:
        raise ProfileError(f"cannot read the available RAM for the cpu profile: {error}") from error


def profile_from_dict(document: Any, origin: str) -> GpuProfile:
    """Validate one profile document; `origin` (a file name) goes into every message."""
    values = Node(document, origin, error=ProfileError).fields(_FIELDS, _REQUIRED)
    for key in ("name", "display_name", "source"):
        if not isinstance(values[key], str) or not values[key].strip():
            raise ProfileError(f"{origin}: {key} must be a non-empty string, got {values[key]!r}")
    kind = values.get("kind", "gpu")
    if kind not in _KINDS:
        raise ProfileError(f"{origin}: kind must be one of {_KINDS}, got {kind!r}")
    values["memory_bytes"] = _memory_bytes(values["memory_bytes"], kind, origin)
    for key in _NUMBERS:
        values[key] = _positive_number(values[key], key, origin)
    for key in _OPTIONAL_NUMBERS:
        if values.get(key) is not None:
            values[key] = _positive_number(values[key], key, origin)
    for key in _OPTIONAL_BYTES:
        value = values.get(key)
        if value is not None and (not _is_int(value) or value < 0):
            raise ProfileError(f"{origin}: {key} must be null or an integer >= 0, got {value!r}")
    price_source = values.get("price_source")
    if price_source is not None and not isinstance(price_source, str):
        raise ProfileError(f"{origin}: price_source must be a string or null, got {price_source!r}")
    if values.get("hourly_usd") is not None and not price_source:
        raise ProfileError(f"{origin}: hourly_usd needs a price_source (where and when)")
    for key in ("host_link", "host_link_source"):
        if values.get(key) is not None and (not isinstance(values[key], str) or not values[key].strip()):
            raise ProfileError(f"{origin}: {key} must be a non-empty string or null, got {values[key]!r}")
    if values.get("host_link_gbps") is not None and not values.get("host_link_source"):
        raise ProfileError(f"{origin}: host_link_gbps needs a host_link_source (where it was measured)")
    match = values.get("nvml_match", [])
    if not isinstance(match, list) or not all(isinstance(word, str) and word for word in match):
        raise ProfileError(f"{origin}: nvml_match must be a list of non-empty strings, got {match!r}")
    values["nvml_match"] = tuple(match)
    capability = values.get("compute_capability")
    if capability is not None and not re.fullmatch(r"\d+\.\d+", str(capability)):
        raise ProfileError(f"{origin}: compute_capability must be like \"8.0\", got {capability!r}")
    return GpuProfile(**values)


def load_profile(path: Path) -> GpuProfile:
    profile = profile_from_dict(read_json_document(path, ProfileError, "GPU profile"), str(path))
    if profile.name != path.stem:
        raise ProfileError(f"{path}: name {profile.name!r} differs from the file name {path.stem!r}")
    return profile


def list_profiles(root: Path | None = None) -> list[GpuProfile]:
    """Every profile in `<root>/gpus/`, sorted by name."""
    folder = gpus_dir(root)
    if not folder.is_dir():
        raise ProfileError(f"no profiles folder at {folder} (set ${PROFILES_ENV} to the profiles/ folder)")
    return [load_profile(path) for path in sorted(folder.glob("*.json"))]


def profile_names(root: Path | None = None) -> list[str]:
    return sorted(path.stem for path in gpus_dir(root).glob("*.json"))


def get_profile(name: str, root: Path | None = None) -> GpuProfile:
    """The profile called `name` (case-insensitive); ProfileError listing the known names."""
    key = name.strip().lower()
    path = gpus_dir(root) / f"{key}.json"
    if "/" in key or "\\" in key or ".." in key or not path.is_file():
        known = ", ".join(profile_names(root)) or "none"
        raise ProfileError(f"unknown GPU profile {name!r}; known profiles: {known}")
    return load_profile(path)


def _memory_bytes(value: Any, kind: str, origin: str) -> int:
    if value == AVAILABLE:
        if kind != "cpu":
            raise ProfileError(f"{origin}: memory_bytes 'available' is only for kind 'cpu'")
        return available_ram_bytes()
    if not _is_int(value) or value <= 0:
        raise ProfileError(f"{origin}: memory_bytes must be a positive integer, got {value!r}")
    return value


def _positive_number(value: Any, key: str, origin: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ProfileError(f"{origin}: {key} must be a positive number, got {value!r}")
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
