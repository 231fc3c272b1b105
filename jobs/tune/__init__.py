"""`modresnet tune`: a hyperparameter search over ModifiedResNet recipes on Ray Tune (random
or Optuna's TPE; ASHA, PBT or FIFO).

Every trial trains through the one engine (`engine.fit`). With one worker per trial the
trial itself runs the loop and its `on_epoch` reports each epoch to Tune with a checkpoint
folder in the core format; with more, each trial launches a Ray Train `TorchTrainer` that
runs `jobs.train.worker.train_loop_per_worker` and forwards its reports to Tune.

    <storage>/<name>/
      modresnet-tune.json  the search's settings (base config, space, search, scheduler);
                           --resume reads it
      <trial dirs>/        Ray Tune's per-trial results (progress.csv, result.json,
                           TensorBoard events, checkpoints, wandb/offline-run-*)
      leaderboard.csv      one row per trial: key config values, val accuracy, epochs, early stop
      trials.png           validation accuracy per epoch of every trial, ASHA stops and PBT
                           exploits marked
      best_config.yaml     the best trial's full config (`modresnet train --config` reads it)
      best-run/            the best trial as a core run directory (best/ last/ metrics.jsonl
                           config.yaml test.json curves.png confusion.png): evaluate/predict/serve

The modules: space.py and space.yaml (the search space: a YAML file of SECTION.FIELD keys),
job.py (the typed search settings, saved as modresnet-tune.json), search.py (search algorithm
and scheduler), trial.py (what each trial runs), progress.py (the console table), results.py
(leaderboard, plot, best-run export), driver.py (running or resuming the search), command.py
(the `modresnet tune` command).
"""
