"""A deterministic simulation of the director pair on virtual time (see world.py), its
simulated ZooKeeper, network and kernels, schedules of faults and the named ones (known.py)."""
