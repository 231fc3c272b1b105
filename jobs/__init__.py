"""Ray drivers around the modresnet core: Train, Tune, Jobs submission and a local
multi-node cluster."""
