"""From traced events to bytes and seconds: the CUDA caching-allocator model
(`allocator`), memory outside it and the throughput constants (`overheads`), and time per
step from FLOPs (`timing`)."""
