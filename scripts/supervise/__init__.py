"""The process supervisor behind `scripts/run.py`: `restarts` decides when a service that
exited is started again (pure bookkeeping), `probe` tells whether one process is ready,
`child` owns one service process (spawn, prefixed output, restart loop, bounded stop).
Nothing here knows the services' names or their order: run.py does."""
