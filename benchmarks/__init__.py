"""The benchmarks behind every performance claim, run through `edgecascade bench ...` from a
checkout of the repository (not part of the installed package). `common` holds what several
of them use; `loadgen`, `echo_server` and `redis_process` are their load generators and
helper processes. Results go to `benchmarks/results/`."""
