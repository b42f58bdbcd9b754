"""deskpulse's processing service: the Faust worker, the pure KPI core, Redis state."""
