"""Health checking: checkers that probe real servers, rise/fall hysteresis, and the scheduler.

Checkers never touch the kernel; their results only change what the reconciler is told about
each (service, real server) through ``lvsctl.core.model.Health``.
"""
