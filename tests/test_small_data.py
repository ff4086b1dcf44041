"""The small-data experiment's plan and verdicts (training/small_data.py), without training: the fixed schedule every
run follows, the subsets, and the rule that says whether the claim holds at a size."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.small_data import FRACTIONS, IMAGES_PER_RUN, RUN_LR_DECAY, VAL, Run, table, verdict


def test_every_run_sees_as_many_digits_and_its_rate_falls_as_far():
    for fraction in FRACTIONS:
        run = Run("capsnet", fraction, 0)
        assert run.epochs * run.digits == IMAGES_PER_RUN  # 50 x 600, 10 x 3,000, 5 x 6,000
        args = run.train_args(Path("r"), Path("d"), None)
        decay = float(args[args.index("--lr-decay") + 1])
        assert decay ** run.epochs == pytest.approx(RUN_LR_DECAY, rel=5e-5)  # the rate is written with 6 decimals


def test_both_models_and_every_seed_train_on_the_same_subset_and_select_nothing():
    a = Run("capsnet", 0.05, 0).train_args(Path("r"), Path("d"), None)
    b = Run("cnn", 0.05, 1).train_args(Path("r"), Path("d"), None)
    assert a[a.index("--limit") + 1] == b[b.index("--limit") + 1] == "3000"
    assert a[a.index("--val") + 1] == str(VAL) and "--no-test" in a and "--resume" in a


@pytest.mark.parametrize("capsnet, cnn, said", [
    ([0.95, 0.96], [0.93, 0.94], "holds"),
    ([0.93, 0.94], [0.95, 0.96], "does not hold"),
    ([0.93, 0.96], [0.94, 0.95], "no clear difference"),
    ([0.95, 0.95], [0.95, 0.94], "no clear difference"),  # a tie is no win
])
def test_the_verdict_needs_every_seed_of_one_model_above_every_seed_of_the_other(capsnet, cnn, said):
    assert verdict(capsnet, cnn) == said


def test_the_table_has_a_row_only_where_both_models_finished():
    results = [{"arch": "capsnet", "fraction": 0.01, "test_acc": 0.9}, {"arch": "cnn", "fraction": 0.01, "test_acc": 0.8},
               {"arch": "capsnet", "fraction": 0.05, "test_acc": 0.95}]
    (row,) = table(results)
    assert (row["train_digits"], row["capsnet_mean"], row["cnn_mean"], row["verdict"]) == (600, 0.9, 0.8, "holds")
