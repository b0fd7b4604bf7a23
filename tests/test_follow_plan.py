"""`lofi train --plan` trains with the plan's optimizer and BatchNorm mode: a
command-line choice that contradicts it is an error naming both values, unless
--override-plan, which config.json records; the plan's allocator setting is set for
the process (lofi.train.options.follow_plan, lofi.train.plan_check)."""

from __future__ import annotations

import os

import pytest

from lofi.errors import OptionError
from lofi.train.plan_check import ALLOC_ENV, apply_alloc_conf, merged_setting
from lofi.train.config import LOFI_RECIPE
from lofi.train.config import CPU_LOFI_RECIPE
from lofi.train.options import follow_plan
from train_helpers import tiny_candidate


def test_the_plans_optimizer_replaces_a_recipe_that_differs():
    recipe, mode, overridden = follow_plan(tiny_candidate(optimizer="adam", batchnorm="trained"), LOFI_RECIPE, {}, None)
    assert (recipe.name, recipe.lr, recipe.momentum) == ("adam", CPU_LOFI_RECIPE.lr, 0.0)
    assert recipe.epochs == LOFI_RECIPE.epochs and mode == "train" and overridden == ()
    recipe, mode, _ = follow_plan(tiny_candidate(optimizer="sgd_momentum"), LOFI_RECIPE, {}, None)
    assert (recipe.name, recipe.lr, recipe.momentum) == ("sgd", LOFI_RECIPE.lr, 0.9) and mode == "frozen"
    _, mode, _ = follow_plan(tiny_candidate(batchnorm="partial"), LOFI_RECIPE, {}, None)
    assert mode == "partial"
    same, _, _ = follow_plan(tiny_candidate(optimizer="sgd"), LOFI_RECIPE, {"lr": 0.01}, None)
    assert same == LOFI_RECIPE.__class__(**{**LOFI_RECIPE.__dict__, "lr": 0.01})  # agreeing options apply


@pytest.mark.parametrize(
    ("lofi", "bn_mode", "message"),
    [
        ({"name": "adam"}, None, "--optimizer adam trains with adam contradicts the plan's optimizer sgd"),
        ({"momentum": 0.9}, None, "--momentum 0.9 trains with sgd_momentum contradicts the plan's optimizer sgd"),
        ({}, "train", r"BatchNorm mode train \(--bn-mode, --freeze-bn/--train-bn\) contradicts the plan's batchnorm frozen"),
        ({}, "partial", "BatchNorm mode partial .* contradicts the plan's batchnorm frozen"),
    ],
)
def test_contradicting_the_plan_is_an_error_naming_both(lofi, bn_mode, message):
    with pytest.raises(OptionError, match=message):
        follow_plan(tiny_candidate(optimizer="sgd", batchnorm="frozen"), LOFI_RECIPE, lofi, bn_mode)


def test_override_uses_the_users_choice_and_says_so():
    recipe, mode, overridden = follow_plan(tiny_candidate(optimizer="sgd", batchnorm="frozen"), LOFI_RECIPE,
                                           {"name": "adam"}, "train", override=True)
    assert recipe.name == "adam" and mode == "train"
    assert overridden == ("optimizer: sgd -> adam", "batchnorm: frozen -> trained")


def test_alloc_conf_goes_into_the_environment(monkeypatch):
    monkeypatch.setenv(ALLOC_ENV, "max_split_size_mb:128,expandable_segments:False")
    assert apply_alloc_conf("expandable_segments:True") == "max_split_size_mb:128,expandable_segments:True"
    assert os.environ[ALLOC_ENV] == "max_split_size_mb:128,expandable_segments:True"
    assert apply_alloc_conf(None) == os.environ[ALLOC_ENV]  # the default allocator: left alone
    assert merged_setting(None, "expandable_segments:True") == "expandable_segments:True"


def test_the_run_config_records_the_allocator_setting_and_overrides():
    from lofi.train.config import DataConfig, config_to_dict
    from lofi.train.options import RecipeOverrides, ResolvedData, build_config
    from train_helpers import tiny_plan

    plan = tiny_plan(tiny_candidate(expandable_segments=True, optimizer="sgd", batchnorm="frozen"))
    resolved = ResolvedData(DataConfig(annotations="a.json", media_root="videos"), synthetic=False, training_videos=4)
    config = build_config(resolved, plan, RecipeOverrides(lofi={"name": "adam"}, config={"override_plan": True}),
                          pretrained=None, baseline=False)
    recorded = config_to_dict(config)
    assert recorded["alloc_conf"] == "expandable_segments:True"
    assert list(recorded["plan_overrides"]) == ["optimizer: sgd -> adam"]
    assert recorded["bn_mode"] == "frozen"  # the plan's BatchNorm mode, not the random-init default
    with pytest.raises(OptionError, match="contradicts the plan's optimizer sgd"):
        build_config(resolved, plan, RecipeOverrides(lofi={"name": "adam"}), pretrained=None, baseline=False)


def test_auto_plans_the_batchnorm_mode_the_run_will_train_with():
    from lofi.train.config import DataConfig
    from lofi.train.options import ResolvedData, planned_batchnorm

    synthetic = ResolvedData(DataConfig(annotations="a.json", media_root="videos"), synthetic=True, training_videos=4)
    user = ResolvedData(DataConfig(annotations="a.json", media_root="videos"), synthetic=False, training_videos=4)
    # the synthetic default starts from its pre-training: TSM partialBN
    assert planned_batchnorm(synthetic, None, None, pretrained=False, from_scratch=False) == "partial"
    assert planned_batchnorm(synthetic, None, None, pretrained=False, from_scratch=True) == "trained"
    assert planned_batchnorm(user, None, None, pretrained=False, from_scratch=False) == "trained"
    assert planned_batchnorm(user, None, None, pretrained=True, from_scratch=False) == "partial"
    assert planned_batchnorm(user, None, True, pretrained=False, from_scratch=False) == "frozen"
    assert planned_batchnorm(user, "partial", False, pretrained=False, from_scratch=False) == "partial"


def test_a_random_encoder_with_fixed_batchnorm_is_noted():
    from lofi.train.config import DataConfig
    from lofi.train.plan_check import batchnorm_notes
    from lofi.train.options import RecipeOverrides, ResolvedData, build_config
    from train_helpers import tiny_plan

    resolved = ResolvedData(DataConfig(annotations="a.json", media_root="videos"), synthetic=False, training_videos=4)
    for batchnorm, noted in (("partial", True), ("frozen", True), ("trained", False)):
        plan = tiny_plan(tiny_candidate(optimizer="sgd", batchnorm=batchnorm))
        random_init = build_config(resolved, plan, RecipeOverrides(), pretrained=None, baseline=False)
        assert bool(batchnorm_notes(random_init)) is noted
        assert not batchnorm_notes(build_config(resolved, plan, RecipeOverrides(), pretrained="w.pth", baseline=False))
