"""The project's benchmark: ``python -m benchmark.run`` (``make bench``) rewrites BENCHMARKS.md.

One run starts its own broker and redis-server on free ports, produces the simulated data
once and measures every contender against it:

========================  =================================================================
``run``                   the sections, the budgets and the command line
``stack``                 the processes a run starts (and stops, also on Ctrl-C), settings
                          spelled as a subprocess environment, polling of Redis state
``machine``               machine facts and the CPU used by other processes meanwhile
``bare_agent``            the ceiling: a Faust agent that only counts what it takes
``replay_child``          ``streams.replay.replay`` in a process of its own
``traffic``               a paced producer of live-stamped events with timed markers
``profiles``              py-spy and pyinstrument around a hot path, summarised
``report``                BENCHMARKS.md from the results
========================  =================================================================
"""
