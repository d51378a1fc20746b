"""The director daemon: election, VIPs, IPVS reconciliation, status API."""
