"""Health checkers, rise/fall hysteresis and the probe scheduler."""
