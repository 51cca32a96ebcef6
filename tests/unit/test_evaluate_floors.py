"""The raw-pixel floor and the evaluate.protocol field."""

from __future__ import annotations


import torch

from lt_ssl.config import config_hash, load_config
from lt_ssl.evaluate import extract_features, pixel_encoder


def test_pixel_floor_is_the_flattened_normalised_image():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.2]
    feats = extract_features(pixel_encoder(), images, mean, std, size=None)
    by_hand = ((images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(feats, by_hand.reshape(5, 48))


def test_protocol_is_part_of_a_runs_identity():
    """Another probe protocol gives other numbers, so it is another run."""
    cfg = load_config(None)
    assert config_hash(load_config(None, ["evaluate.protocol=balanced_subset"])) != config_hash(cfg)
