"""Running trials: the supervisor↔worker protocol, the pool of worker processes, the worker
entry point, the trial runner with its memory probe, and the context the objective reads."""
