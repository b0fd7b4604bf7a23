"""Model-agnostic memory and time planner. Never imports `lofi`, never touches CUDA at
import time."""
