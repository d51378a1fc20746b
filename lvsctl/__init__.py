"""lvsctl: a high-availability cluster manager for Linux Virtual Server (IPVS)."""

__version__ = "0.1.0"
