"""Safe rollouts: which variant answers a request (sticky assignment), whether a canary's
measurements may advance it (statistical gates), and the canary's state machine. Pure: the
ingress feeds them measurements and a clock, and keeps their state in Redis."""
