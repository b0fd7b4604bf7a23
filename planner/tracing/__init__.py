"""Tracing one training step without memory: the recorder of allocations and FLOPs
(`recorder`), the step it drives (`step`), CUDA autocast emulated off CUDA (`autocast`),
memoized meta kernels (`meta_kernels`), event streams assembled from traces for the
allocator (`synthesis`), the on-disk trace cache (`cache`) and the per-block costs that
order `blocks:N` checkpointing (`block_costs`)."""
