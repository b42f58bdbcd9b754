"""Development tools: the embedded broker and Redis launchers, the demo, the traffic simulator.

The top layer below the command line: the service never imports them (``make lint`` checks
it with import-linter); ``deskpulse demo`` and ``deskpulse simulate`` load them when run.
"""
