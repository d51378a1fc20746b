"""Failover drills, timelines and reports."""
