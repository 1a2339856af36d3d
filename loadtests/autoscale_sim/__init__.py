"""A simulation of Sluice's SLO autoscaling policy against Ray Serve's stock policy at cluster
scale: `python -m loadtests.autoscale_sim --help`."""
