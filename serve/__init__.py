"""Ray Serve application for modresnet checkpoints."""
