"""`modresnet train` on Ray Train V2: data-parallel training of ModifiedResNet through the one
engine. driver.py starts the TorchTrainer and writes the core run directory after the fit;
worker.py holds what each data-parallel worker runs (Tune's data-parallel trials run it too);
command.py, the `modresnet train` command (which also trains in-process with --local)."""
