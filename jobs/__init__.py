"""Ray drivers: Train, Tune and Jobs submission around the modresnet core."""
