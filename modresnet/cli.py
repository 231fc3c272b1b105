"""`modresnet`: the command line's composition root. Each command lives beside its logic
(the core's in modresnet/commands.py, the Ray ones in jobs/, serving in serve/); this module
only registers them, and is the one module in modresnet/ that imports jobs and serve. Those
command modules import torch and Ray when a command runs, so `--help` stays fast."""

from __future__ import annotations

import typer

from jobs.client.commands import jobs_app
from jobs.cluster.commands import cluster_app
from jobs.pipeline.command import pipeline_app
from jobs.train import command as train_command
from jobs.tune import command as tune_command
from modresnet import commands
from modresnet.registry.commands import models_app
from serve import commands as serve_commands
from serve.canary import command as canary_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, tune and serve ModifiedResNet CIFAR-10 classifiers.",
)
app.command()(commands.summary)
app.command()(train_command.train)
app.command()(commands.evaluate)
app.command("predict")(commands.predict_command(serve_commands.predict_url))
app.command()(tune_command.tune)
app.add_typer(jobs_app, name="jobs")
app.add_typer(cluster_app, name="cluster")
models_app.command("promote")(canary_command.promote)
app.add_typer(models_app, name="models")
app.add_typer(pipeline_app, name="pipeline")
app.command("serve")(serve_commands.serve)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
