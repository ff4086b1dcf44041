"""The bigger canvases (training/canvas.py) on real MNIST digits, and the models built for them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.baseline import BaselineCNN, BaselineConfig
from training.canvas import AFFNIST, MULTI, affnist_like, bounding_boxes, multimnist_like, random_placement, translate
from training.data import centre, load_split
from training.model import CapsNet, CapsNetConfig, margin_loss


@pytest.fixture(scope="module")
def test_digits(mnist_root):
    return load_split("test", mnist_root, 500)


def test_affnist_like_draws_in_the_documented_ranges_and_keeps_the_whole_digit(test_digits):
    x, _ = test_digits
    images, params = affnist_like(x, seed=0)
    assert images.shape == (500, 1, 40, 40) and torch.equal(images, affnist_like(x, seed=0)[0])
    assert not torch.equal(images, affnist_like(x, seed=1)[0])
    assert params["rotation_deg"].abs().max() <= AFFNIST["rotation_deg"]
    assert params["rotation_deg"].abs().max() > 0.9 * AFFNIST["rotation_deg"]  # the range is used, not a corner of it
    assert params["shear"].abs().max() <= AFFNIST["shear"]
    for scale in (params["scale_x"], params["scale_y"]):
        assert AFFNIST["scale"][0] <= scale.min() and scale.max() <= AFFNIST["scale"][1]
    # the ink scales with the area (rotation and shear keep it): no digit is cut off by the canvas's edge
    # (measured: 0.974 to 1.045 of the area-scaled ink on these 500 digits; bilinear sampling blurs a little)
    ratio = images.sum((1, 2, 3)) / x.sum((1, 2, 3)) / (params["scale_x"] * params["scale_y"])
    assert ratio.min() > 0.95 and ratio.max() < 1.07
    # and the translations spread the digits over the canvas: the centre of the boxes moves by more than 10 px
    top, bottom, left, right = bounding_boxes(images).unbind(1)
    assert ((top + bottom) / 2 - 19.5).abs().max() > 10 and ((left + right) / 2 - 19.5).abs().max() > 10


def test_random_placement_moves_whole_digits_anywhere_on_the_canvas(test_digits):
    x, _ = test_digits
    placed = random_placement(x, 40, seed=1)
    assert torch.allclose(placed.sum((1, 2, 3)), x.sum((1, 2, 3)))  # whole pixels, nothing lost
    shifts = bounding_boxes(placed)[:, 0] - bounding_boxes(centre(x, 40))[:, 0]
    assert shifts.min() == -6 and shifts.max() == 6


def test_translate_moves_by_whole_pixels_and_fills_with_zeros():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 1, 1] = 1.0
    moved = translate(image.repeat(2, 1, 1, 1), torch.tensor([2, -3]), torch.tensor([1, 0]))
    assert moved[0, 0, 3, 2] == 1 and moved[0].sum() == 1
    assert moved[1].sum() == 0  # moved off the canvas


def test_multimnist_like_overlays_two_digits_of_different_classes_shifted_at_most_4_px(test_digits):
    x, y = test_digits
    images, labels, parts = multimnist_like(x, y, 400, torch.Generator().manual_seed(0))
    assert images.shape == (400, 1, 36, 36) and parts.shape == (400, 2, 1, 36, 36)
    assert (labels[:, 0] != labels[:, 1]).all()
    assert torch.equal(images, parts.amax(1))
    centred = bounding_boxes(centre(x, MULTI["canvas"]))
    boxes = torch.stack([bounding_boxes(parts[:, k]) for k in range(2)], 1)  # (400, 2, 4)
    again = multimnist_like(x, y, 400, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], images)
    # every part is a test digit of its label, moved by at most 4 px: its box's size is that of some digit of the
    # class, and its top-left corner lies within 4 px of where the centred digits' corners lie
    assert boxes[..., 0].min() >= centred[:, 0].min() - 4 and boxes[..., 0].max() <= centred[:, 0].max() + 4
    assert boxes[..., 2].min() >= centred[:, 2].min() - 4 and boxes[..., 2].max() <= centred[:, 2].max() + 4


@pytest.mark.parametrize("size, grid", [(40, 12), (36, 10), (28, 6)])
def test_both_models_take_their_canvas(size, grid):
    capsnet = CapsNet(CapsNetConfig(image_size=size)).eval()
    assert capsnet.cfg.primary_grid == grid and capsnet.cfg.num_primary == 32 * grid**2
    with torch.no_grad():
        lengths, poses, reconstruction = capsnet(torch.rand(2, 1, size, size))
        logits = BaselineCNN(BaselineConfig(image_size=size)).eval()(torch.rand(2, 1, size, size))
    assert lengths.shape == (2, 10) and reconstruction.shape == (2, 1, size, size) and logits.shape == (2, 10)


def test_the_margin_loss_takes_every_class_present():
    lengths = torch.rand(4, 10)
    labels = torch.tensor([1, 2, 3, 4])
    assert torch.allclose(margin_loss(lengths, labels), margin_loss(lengths, F.one_hot(labels, 10)))
    two = F.one_hot(torch.tensor([[1, 5]] * 4), 10).amax(1)
    ideal = torch.zeros(4, 10)
    ideal[:, [1, 5]] = 0.95
    assert margin_loss(ideal, two) == 0 and margin_loss(ideal, labels) > 0
