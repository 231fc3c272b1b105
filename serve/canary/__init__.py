"""Canary promotion: the app's traffic table (traffic.py), which the replicas read their canary
share from, and the driver that raises the share and watches the serving metrics."""
