"""The hardware a plan is made for: the profile of a GPU (`gpu_profile`), profiles loaded
from `profiles/gpus/` (`profiles`), what NVML sees here (`nvml`), this CPU's measured
speed (`cpu_speed`) and the GPU's link to host memory (`host_links`)."""
