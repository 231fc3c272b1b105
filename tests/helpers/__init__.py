"""Helpers the test tiers share: one module per thing they drive (a cluster, KubeRay manifests,
processes, Prometheus, Ray Train, Serve, S3 storage, Tune) and one rule for test ports."""
