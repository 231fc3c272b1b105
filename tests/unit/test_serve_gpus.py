"""GPU replicas, on the CPU (no Ray, no GPU): what --gpus-per-replica selects (the torch
backend, a GPU batch wait, the replicas' GPU reservation, channels_last and autocast), and the
one-line errors for what cannot run: a GPU with another backend, more GPUs than the cluster
has, a replica that sees no GPU."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from modresnet.checkpoint import load_model
from modresnet.cli import app
from modresnet.errors import UserError
from serve.app import build_app
from serve.args import GPU_BATCH_WAIT_S, ServeArgs
from serve.backends import load_backend
from serve.backends.torch_eager import NoGpu, TorchBackend, gpu_config
from serve.gpus import check_gpus
from serve.service import Service


def test_gpus_select_the_torch_backend_and_a_gpu_batch_wait_unless_given(random_checkpoint):
    ck = str(random_checkpoint)
    gpu = ServeArgs(checkpoint=ck, gpus_per_replica=0.25)
    assert (gpu.backend, gpu.batch_wait_timeout_s) == ("torch", GPU_BATCH_WAIT_S)
    assert ServeArgs.model_validate(gpu.model_dump()) == gpu  # as each replica reads it back
    given = ServeArgs(checkpoint=ck, gpus_per_replica=1, batch_wait_timeout_s=0)
    assert given.batch_wait_timeout_s == 0
    cpu = ServeArgs(checkpoint=ck)
    assert (cpu.backend, cpu.batch_wait_timeout_s, cpu.gpus_per_replica) == ("onnx", 0, 0)
    deployment = build_app(gpu)._bound_deployment
    assert deployment.ray_actor_options["num_gpus"] == 0.25
    assert build_app(cpu)._bound_deployment.ray_actor_options["num_gpus"] == 0


@pytest.mark.parametrize("backend", ["onnx", "int8"])
def test_a_gpu_with_another_backend_is_one_line_naming_the_torch_backend(
    random_checkpoint, backend
):
    result = CliRunner().invoke(
        app, ["serve", str(random_checkpoint), "--gpus-per-replica", "0.5", "--backend", backend]
    )
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert (
        f"--gpus-per-replica: GPU replicas run the torch backend only, not {backend}: use "
        "--backend torch" in message
    ), message
    with pytest.raises(ValueError, match="runs on the CPU only"):
        load_backend(backend, load_model(random_checkpoint), device="cuda")


def test_negative_gpus_are_refused_by_their_flag(random_checkpoint):
    result = CliRunner().invoke(app, ["serve", str(random_checkpoint), "--gpus-per-replica", "-1"])
    assert result.exit_code == 2 and "--gpus-per-replica:" in result.output, result.output


def test_more_gpus_than_the_cluster_has_is_one_line_before_deploying(random_checkpoint):
    args = ServeArgs(
        checkpoint=str(random_checkpoint), gpus_per_replica=0.25, min_replicas=3, max_replicas=4
    )
    check_gpus(args, {"CPU": 2.0, "GPU": 1.0})
    check_gpus(args, {"GPU": 0.75})  # exactly enough: 3 x 0.25
    with pytest.raises(UserError) as err:
        check_gpus(args, {"CPU": 16.0})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("--gpus-per-replica 0.25 x --min-replicas 3 needs 0.75 GPUs")
    assert "this Ray cluster has 0" in message and "ray start --num-gpus" in message
    check_gpus(ServeArgs(checkpoint=str(random_checkpoint)), {})  # no GPUs asked: no check


def test_on_a_gpu_the_model_runs_channels_last_under_autocast_whatever_it_trained_in(
    random_checkpoint,
):
    config = load_model(random_checkpoint).config
    trained = config.model_copy(
        update={
            "train": config.train.model_copy(update={"channels_last": False, "precision": "fp32"})
        }
    )
    on_gpu = gpu_config(trained)
    assert on_gpu.train.channels_last and on_gpu.train.precision == "auto"
    assert on_gpu.model == trained.model and on_gpu.data == trained.data


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_a_replica_that_sees_no_gpu_fails_naming_it(random_checkpoint):
    with pytest.raises(NoGpu, match="sees no CUDA GPU"):
        TorchBackend(load_model(random_checkpoint), "cuda")
    args = ServeArgs(checkpoint=str(random_checkpoint), gpus_per_replica=0.5)
    with pytest.raises(NoGpu, match="ray start --num-gpus"):
        Service(args.model_dump())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_replica_serves_what_the_cpu_one_does(random_checkpoint):
    """Where there is a GPU: the GPU replica (warmed up at start) answers as the CPU one does,
    to the tolerance of bf16/fp16 autocast."""
    ck = str(random_checkpoint)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    gpu = Service(ServeArgs(checkpoint=ck, gpus_per_replica=1).model_dump())
    cpu = Service(ServeArgs(checkpoint=ck, backend="torch").model_dump())
    assert gpu.backend.precision in ("bf16", "fp16")
    expected = cpu.backend.probabilities(images)
    got = gpu.backend.probabilities(images)
    assert abs(got - expected).max() < 0.05
