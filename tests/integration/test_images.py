"""Image decoding on real CIFAR-10 images: a 32x32 PNG round-trips exactly."""

import torch

from modresnet.images import decode_image, encode_png


def test_32x32_png_round_trips_exactly(small_cifar):
    image = small_cifar.test.x[0]
    assert torch.equal(decode_image(encode_png(image)), image)
