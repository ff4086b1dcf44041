import math

import torch

from training.model import (CapsNet, CapsNetConfig, DigitCaps, PrimaryCaps, capsule_lengths, count_parameters,
                            margin_loss, reconstruction_loss, routing_summary, squash)


def test_parameter_count_matches_the_paper():
    model = CapsNet()
    assert count_parameters(model) == 8_215_568
    assert count_parameters(model) - count_parameters(model.decoder) == 6_804_224
    assert model.digit_caps.W.numel() == 1_474_560


def test_config_derives_the_capsule_counts():
    cfg = CapsNetConfig()
    assert cfg.primary_grid == 6 and cfg.num_primary == 1152
    assert CapsNetConfig.from_dict(cfg.to_dict()) == cfg


def test_squash_keeps_direction_and_maps_length_into_unit_interval():
    # up to |s| ~ 400: beyond that |s|^2 / (1 + |s|^2) rounds to exactly 1.0 in float32
    s = torch.randn(1000, 16) * torch.logspace(-4, 2, 1000)[:, None]
    v = squash(s)
    n_s, n_v = s.norm(dim=-1), v.norm(dim=-1)
    assert torch.all(n_v >= 0) and torch.all(n_v < 1)
    assert torch.allclose(n_v, n_s**2 / (1 + n_s**2), rtol=1e-4, atol=1e-7)
    cos = (s * v).sum(-1) / (n_s * n_v)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_squash_and_length_have_no_nan_at_zero():
    s = torch.zeros(3, 10, 16, requires_grad=True)
    v = squash(s)
    lengths = capsule_lengths(v)
    lengths.sum().backward()
    assert torch.all(v == 0)
    assert torch.isfinite(lengths).all() and torch.isfinite(s.grad).all()


def test_primary_capsules_group_eight_consecutive_channels():
    cfg = CapsNetConfig()
    caps = PrimaryCaps(cfg)
    x = torch.randn(2, 256, 20, 20)
    u = caps(x)
    assert u.shape == (2, 1152, 8)
    raw = caps.conv(x)  # (2, 256, 6, 6): capsule i = 36 t + 6 y + x holds channels 8t..8t+7 at (y, x)
    t, y, xx = 5, 2, 3
    assert torch.allclose(u[:, 36 * t + 6 * y + xx], squash(raw[:, 8 * t:8 * t + 8, y, xx]), atol=1e-6)


def test_coupling_coefficients_sum_to_one_over_parents():
    cfg = CapsNetConfig()
    digit = DigitCaps(cfg)
    u_hat = digit.predictions(squash(torch.randn(4, 1152, 8)))
    assert u_hat.shape == (4, 10, 1152, 16)
    v, c = digit.route(u_hat)
    assert v.shape == (4, 10, 16) and c.shape == (4, 10, 1152)
    assert torch.allclose(c.sum(1), torch.ones(4, 1152), atol=1e-5)
    assert not torch.allclose(c, torch.full_like(c, 0.1))  # routing moved away from uniform


def test_routing_follows_procedure_1_and_couples_to_the_parent_that_agrees():
    """Agreement raises coupling: every input predicts the same vector for parent 3 and noise for the others,
    so after routing each input sends more than a uniform 1/10 to parent 3, more than to any other. The
    vectorised route() equals a loop over Procedure 1 of the paper."""
    cfg = CapsNetConfig()
    digit = DigitCaps(cfg)
    torch.manual_seed(0)
    u_hat = 0.05 * torch.randn(2, 10, 1152, 16)
    u_hat[:, 3] = 0.05 * torch.ones(16)  # all 1152 inputs agree on parent 3
    v, c = digit.route(u_hat)
    others = c[:, [j for j in range(10) if j != 3]]
    assert (c[:, 3] > 0.1).all() and (c[:, 3:4] > others).all() and others.mean() < 0.1
    assert capsule_lengths(v).argmax(1).tolist() == [3, 3]

    b = torch.zeros(2, 1152, 10)  # b_ij, Procedure 1 line 2
    for r in range(cfg.routing_iters):
        c_loop = torch.softmax(b, dim=2)  # line 4: softmax over the parents j
        s_loop = torch.stack([(c_loop[:, :, j, None] * u_hat[:, j]).sum(1) for j in range(10)], 1)  # line 5
        v_loop = squash(s_loop)  # line 6
        b = b + torch.stack([(u_hat[:, j] * v_loop[:, j, None]).sum(-1) for j in range(10)], 2)  # line 7
    assert torch.allclose(v, v_loop, atol=1e-6) and torch.allclose(c, c_loop.transpose(1, 2), atol=1e-6)


def test_predictions_match_a_loop_over_pairs():
    cfg = CapsNetConfig()
    digit = DigitCaps(cfg)
    u = torch.randn(2, 1152, 8)
    u_hat = digit.predictions(u)
    for i, j in [(0, 0), (700, 3), (1151, 9)]:
        W_ij = digit.W[i, :, 16 * j:16 * (j + 1)].T  # (16, 8)
        assert torch.allclose(u_hat[:, j, i], u[:, i] @ W_ij.T, atol=1e-6)


def test_margin_loss_hand_computed():
    lengths = torch.tensor([[0.95, 0.05, 0.5] + [0.0] * 7, [0.2, 0.3, 0.0] + [0.0] * 7])
    target = torch.tensor([0, 1])
    # row 0: present 0.95 >= 0.9 -> 0; absent 0.5 -> 0.5 * 0.4^2 = 0.08
    # row 1: present 0.3 -> 0.6^2 = 0.36; absent 0.2 -> 0.5 * 0.1^2 = 0.005
    expected = (0.08 + 0.365) / 2
    assert math.isclose(margin_loss(lengths, target).item(), expected, rel_tol=1e-5)


def test_reconstruction_loss_hand_computed():
    images = torch.zeros(2, 1, 28, 28)
    recon = torch.zeros(2, 1, 28, 28)
    recon[0, 0, 0, :4] = 0.5  # 4 * 0.25 = 1.0
    recon[1, 0, 5, 5] = 1.0  # 1.0
    assert math.isclose(reconstruction_loss(recon, images).item(), 0.0005 * (1.0 + 1.0) / 2, rel_tol=1e-6)


def test_forward_shapes_and_masking():
    torch.manual_seed(0)
    model = CapsNet().eval()
    x = torch.rand(3, 1, 28, 28)
    lengths, poses, recon = model(x)
    assert lengths.shape == (3, 10) and poses.shape == (3, 10, 16) and recon.shape == (3, 1, 28, 28)
    assert torch.all((recon >= 0) & (recon <= 1))
    target = (lengths.argmax(1) + 1) % 10  # another class: the decoder must see a different capsule
    _, _, recon_t = model(x, target)
    assert not torch.allclose(recon, recon_t)
    _, _, recon_same = model(x, lengths.argmax(1))
    assert torch.allclose(recon, recon_same)


def test_routing_summary_averages_the_winning_class_over_types_and_positions():
    cfg = CapsNetConfig()
    c = torch.full((1, 10, 1152), 0.05)
    c[0, 3, 36 * 5 + 6 * 2 + 4] = 0.95  # type 5, row 2, column 4 couples to class 3
    c[0, 3, 36 * 7 + 6 * 2 + 4] = 0.75  # type 7, same position
    routing_map, types = routing_summary(c, torch.tensor([3]), cfg)
    assert routing_map.shape == (1, 6, 6) and types.shape == (1, 32)
    assert math.isclose(routing_map[0, 2, 4].item(), (30 * 0.05 + 0.95 + 0.75) / 32, rel_tol=1e-6)
    assert math.isclose(routing_map[0, 0, 0].item(), 0.05, rel_tol=1e-6)
    assert math.isclose(types[0, 5].item(), (35 * 0.05 + 0.95) / 36, rel_tol=1e-6)
    assert math.isclose(types[0, 0].item(), 0.05, rel_tol=1e-6)
    other_map, _ = routing_summary(c, torch.tensor([4]), cfg)
    assert torch.allclose(other_map, torch.full((1, 6, 6), 0.05))


def test_explain_is_forward_plus_the_last_routing_of_the_winner():
    torch.manual_seed(0)
    model = CapsNet().eval()
    x = torch.rand(2, 1, 28, 28)
    lengths, poses, recon = model(x)
    e_lengths, e_poses, e_recon, routing_map, types = model.explain(x)
    assert torch.equal(lengths, e_lengths) and torch.equal(poses, e_poses) and torch.equal(recon, e_recon)
    h = torch.relu(model.conv1(x))
    _, c = model.digit_caps.route(model.digit_caps.predictions(model.primary_caps(h)))
    winner = c[torch.arange(2), lengths.argmax(1)]  # (2, 1152)
    assert torch.allclose(routing_map, winner.view(2, 32, 6, 6).mean(1))
    assert torch.allclose(types, winner.view(2, 32, 36).mean(2))
    assert torch.all((routing_map > 0) & (routing_map < 1))


def test_decode_is_the_decoder_on_one_given_capsule():
    torch.manual_seed(0)
    model = CapsNet().eval()
    lengths, poses, recon = model(torch.rand(3, 1, 28, 28))
    label = lengths.argmax(1)
    assert torch.allclose(model.decode(poses[torch.arange(3), label], label), recon, atol=1e-6)
    nudged = poses[torch.arange(3), label].clone()
    nudged[:, 0] += 0.25
    assert not torch.allclose(model.decode(nudged, label), recon, atol=1e-3)
