"""ModifiedResNet: the paper's parameter count, shapes, flavors, the summary table."""

import pytest
import torch

from modresnet.model import FLAVORS, ModelConfig, build_model, count_parameters
from modresnet.summary import summarize


def test_paper_model_has_the_papers_parameter_count():
    assert count_parameters(build_model(FLAVORS["paper"])) == 2_777_674


@pytest.mark.parametrize("flavor", ["paper", "debug"])
def test_logits_shape(flavor):
    model = build_model(FLAVORS[flavor]).eval()
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)


def test_configurable_widths_blocks_and_classes():
    model = build_model(ModelConfig(widths=(16, 32), blocks=(1, 3), num_classes=7))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert len(model.layers[1]) == 3


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"widths": ()}, "model.widths"),
        ({"blocks": (2, 2)}, "model.blocks"),
        ({"num_classes": 1}, "model.num_classes"),
    ],
)
def test_bad_architecture_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


def test_summary_matches_figure_two():
    s = summarize(build_model(FLAVORS["paper"]))
    assert s.total_params == s.trainable_params == 2_777_674
    assert s.rows[0].output_shape == (-1, 64, 32, 32)
    assert s.rows[-1].output_shape == (-1, 10)
    assert sum(r.params for r in s.rows) == 2_777_674
    assert s.params_mb == pytest.approx(2_777_674 * 4 / 2**20)
    assert s.input_mb == pytest.approx(3 * 32 * 32 * 4 / 2**20)
    assert s.total_mb > s.params_mb + s.forward_backward_mb > 0
