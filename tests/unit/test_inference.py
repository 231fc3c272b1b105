"""Inference helpers: top-k order, ties broken by class index."""

import torch


def test_top_k_orders_ties_by_class_index():
    from modresnet.inference import top_k

    probs = torch.tensor([[0.1, 0.3, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25]])
    values, order = top_k(probs, 3)
    assert order.tolist() == [[1, 2, 3], [0, 1, 2]]
    assert torch.equal(values, probs.gather(1, order))
    assert top_k(probs, 99)[1].shape == (2, 4) and top_k(probs, 0)[1].shape == (2, 1)
