"""What NVML (nvidia-ml-py, imported as `pynvml`, lazily) sees on this machine, mapped to
hardware profiles. No GPU, no driver or no NVML library is an empty result with the
reason, never a traceback.

Mapping: a profile lists words of NVML device names in `nvml_match` ("V100", "A100",
"RTX 4090"); among the profiles whose word appears in the name, the one whose memory is
closest to NVML's total wins (V100 16 GB vs 32 GB, A100 40 GB vs 80 GB). A GPU no
profile matches gets a profile built from NVML's own figures (profile_from_nvml).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from planner.errors import ProfileError
from planner.hardware.gpu_profile import GpuProfile
from planner.hardware.profiles import DEFAULT_GPU

MATCH_TOLERANCE = 0.15  # NVML's total may be a few % below the datasheet figure (reserved, ECC)
_NVML_SOURCE = "NVML on this machine (nvidia-ml-py)"


@dataclass(frozen=True)
class NvmlFigures:
    """What NVML reports about one device; None where this driver cannot say."""

    index: int
    name: str
    memory_total: int
    memory_used: int
    compute_capability: tuple[int, int] | None = None
    cuda_cores: int | None = None
    max_sm_clock_mhz: int | None = None
    max_memory_clock_mhz: int | None = None
    memory_bus_width_bits: int | None = None


@dataclass(frozen=True)
class DetectedGpu:
    figures: NvmlFigures
    profile: GpuProfile  # memory_bytes is NVML's total for this device
    matched: str | None  # the profile it maps to, or None: built from NVML's figures


@dataclass(frozen=True)
class Detection:
    gpus: tuple[DetectedGpu, ...]
    driver: str | None
    reason: str | None  # why nothing was found (no library, no driver, no device)


def match_profile(name: str, memory_total: int, profiles: Sequence[GpuProfile]) -> GpuProfile | None:
    """The profile for an NVML device name, or None."""
    hits = [p for p in profiles if p.kind == "gpu" and any(_has_word(name, word) for word in p.nvml_match)]
    if not hits:
        return None
    best = min(hits, key=lambda p: abs(p.memory_bytes - memory_total))
    if abs(best.memory_bytes - memory_total) > MATCH_TOLERANCE * best.memory_bytes:
        return None
    return best


def profile_from_nvml(figures: NvmlFigures) -> GpuProfile:
    """A profile for a GPU no profile file covers, from NVML's figures.

    fp32 peak = CUDA cores x 2 FLOPs (one FMA) x max SM clock; tensor-core fp16/bf16 is
    taken as 4 x fp32, the dense ratio of the oldest tensor-core parts we profile
    (T4: 65 / 8.1 = 8; RTX 3090: 71 / 35.6 = 2; so 4 is a middle guess), and bf16 is
    assumed from compute capability 8.0 (Ampere) on. Bandwidth = 2 (double data rate)
    x memory clock x bus width / 8. Unknown figures fall back to a T4-class device."""
    cores, clock = figures.cuda_cores, figures.max_sm_clock_mhz
    fp32 = cores * 2 * clock * 1e6 / 1e12 if cores and clock else 8.1
    mem_clock, width = figures.max_memory_clock_mhz, figures.memory_bus_width_bits
    bandwidth = 2 * mem_clock * 1e6 * width / 8 / 1e9 if mem_clock and width else 320.0
    has_bf16 = figures.compute_capability is not None and figures.compute_capability >= (8, 0)
    return GpuProfile(
        name=_slug(figures.name),
        display_name=figures.name,
        memory_bytes=figures.memory_total,
        fp32_tflops=round(fp32, 1),
        fp16_tflops=round(4 * fp32, 1),
        bf16_tflops=round(4 * fp32, 1) if has_bf16 else None,
        bandwidth_gbps=round(bandwidth, 1),
        source=f"{_NVML_SOURCE}: no profile file; throughput derived from cores x clock (see planner/hardware/nvml.py)",
    )


def resolve(figures: NvmlFigures, profiles: Sequence[GpuProfile]) -> DetectedGpu:
    """The profile for a detected device; its memory is what NVML reports for it."""
    matched = match_profile(figures.name, figures.memory_total, profiles)
    if matched is None:
        return DetectedGpu(figures, profile_from_nvml(figures), None)
    return DetectedGpu(figures, dataclasses.replace(matched, memory_bytes=figures.memory_total), matched.name)


def detect_gpus(profiles: Sequence[GpuProfile]) -> Detection:
    """Ask NVML. Never raises: failures come back as `reason`."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return Detection((), None, "nvidia-ml-py (pynvml) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return Detection((), None, f"NVML is not available here ({_nvml_message(error)}): no NVIDIA driver or no GPU")
    except OSError as error:  # a broken library on the loader path
        return Detection((), None, f"NVML could not be loaded: {error}")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        count = pynvml.nvmlDeviceGetCount()
        found = tuple(resolve(_figures(pynvml, index), profiles) for index in range(count))
    except pynvml.NVMLError as error:
        return Detection((), None, f"NVML failed while listing devices: {_nvml_message(error)}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return Detection(found, driver, None if found else "the NVIDIA driver reports no GPU")


def _figures(pynvml, index: int) -> NvmlFigures:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)

    def optional(call, *args):
        try:
            return call(handle, *args)
        except (pynvml.NVMLError, AttributeError):
            return None

    capability = optional(pynvml.nvmlDeviceGetCudaComputeCapability)
    return NvmlFigures(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        memory_total=int(memory.total),
        memory_used=int(memory.used),
        compute_capability=tuple(capability) if capability else None,
        cuda_cores=optional(pynvml.nvmlDeviceGetNumGpuCores),
        max_sm_clock_mhz=optional(pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_SM),
        max_memory_clock_mhz=optional(pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_MEM),
        memory_bus_width_bits=optional(pynvml.nvmlDeviceGetMemoryBusWidth),
    )


def _has_word(name: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", name, flags=re.IGNORECASE) is not None


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug.removeprefix("nvidia-") or "gpu"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_message(error: Exception) -> str:
    return str(error) or type(error).__name__


@dataclass(frozen=True)
class Target:
    """The hardware a plan is made for, and what the user should be told about it."""

    profile: GpuProfile
    detected: bool  # the profile describes a GPU NVML sees here
    notices: tuple[str, ...]
    detection: Detection | None  # None: not asked (a profile named explicitly)


def resolve_target(
    option: str,
    profiles: Sequence[GpuProfile],
    *,
    gpus: int = 1,
    fallback: str = DEFAULT_GPU,
    fallback_note: str = "",
    fallback_hint: str = "",
    detection: Detection | None = None,
) -> Target:
    """`--gpu NAME` -> that profile; `--gpu auto` -> the GPU NVML sees here (its memory as
    NVML reports it), or `fallback` with a notice when there is none (the default
    profile, or cpu); `fallback_note` says in the notice why that one, `fallback_hint` how
    a front end's user plans for another."""
    by_name = {p.name: p for p in profiles}
    if option.strip().lower() != "auto":
        key = option.strip().lower()
        if key not in by_name:
            raise ProfileError(f"unknown GPU profile {option!r}; known profiles: {', '.join(sorted(by_name))} (or auto)")
        return Target(by_name[key], False, (), None)
    detection = detection if detection is not None else detect_gpus(profiles)
    if not detection.gpus:
        if fallback not in by_name:
            raise ProfileError(f"no GPU here and no fallback profile {fallback!r} in profiles/gpus")
        notice = f"no NVIDIA GPU visible here ({detection.reason}); planning for {fallback}"
        notice += f" ({fallback_note})" if fallback_note else ""
        notice += f"; {fallback_hint}" if fallback_hint else ""
        return Target(by_name[fallback], False, (notice,), detection)
    first = detection.gpus[0]
    notices = []
    if first.matched is None:
        notices.append(f"{first.figures.name} has no profile in profiles/gpus: its throughput is derived from NVML's figures")
    if len({g.figures.name for g in detection.gpus}) > 1:
        notices.append(f"GPUs here differ; planning for GPU 0 ({first.figures.name})")
    if gpus > len(detection.gpus):
        notices.append(f"planning for {gpus} GPUs of this kind; {len(detection.gpus)} visible here")
    if first.figures.memory_used > 0.05 * first.figures.memory_total:
        used = first.figures.memory_used / 2**30
        notices.append(f"GPU 0 already has {used:.1f} GiB in use; the budget assumes the whole GPU is free")
    return Target(first.profile, True, tuple(notices), detection)
