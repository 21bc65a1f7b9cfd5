"""Starting, watching and stopping processes. `procs` is the one blocking process runner
(start with a log file, wait for readiness with an early-exit check, SIGTERM then SIGKILL)
that the benchmarks, the cluster fixtures and the tests use; `probe` tells whether one
process is ready; the supervisor behind `scripts/run.py` is `restarts` (when a service
that exited is started again: pure bookkeeping) and `child` (one service process with
asyncio: spawn, prefixed output, restart loop, bounded stop). Nothing here knows the
services' names or their order: run.py does."""
