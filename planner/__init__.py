"""Model-agnostic memory and time planner. A workload brings its model and its axes
(`planner.workload`, `planner.axes`); the planner never imports a workload's package and
never touches CUDA at import time."""
