"""`lofi train --plan` trains with the plan's optimizer and BatchNorm mode: a
command-line choice that contradicts it is an error naming both values, unless
--override-plan, which config.json records; the plan's allocator setting is set for
the process (lofi.train.setup.follow_plan, lofi.train.alloc_conf)."""

from __future__ import annotations

import os

import pytest

from lofi.errors import OptionError
from lofi.train.alloc_conf import ENV, apply_alloc_conf, merged_setting
from lofi.train.config import LOFI_RECIPE
from lofi.train.defaults import CPU_LOFI_RECIPE
from lofi.train.setup import follow_plan
from train_helpers import tiny_candidate


def test_the_plans_optimizer_replaces_a_recipe_that_differs():
    recipe, frozen, overridden = follow_plan(tiny_candidate(optimizer="adam", batchnorm="trained"), LOFI_RECIPE, {}, None)
    assert (recipe.name, recipe.lr, recipe.momentum) == ("adam", CPU_LOFI_RECIPE.lr, 0.0)
    assert recipe.epochs == LOFI_RECIPE.epochs and frozen is False and overridden == ()
    recipe, frozen, _ = follow_plan(tiny_candidate(optimizer="sgd_momentum"), LOFI_RECIPE, {}, None)
    assert (recipe.name, recipe.lr, recipe.momentum) == ("sgd", LOFI_RECIPE.lr, 0.9) and frozen is True
    same, _, _ = follow_plan(tiny_candidate(optimizer="sgd"), LOFI_RECIPE, {"lr": 0.01}, None)
    assert same == LOFI_RECIPE.__class__(**{**LOFI_RECIPE.__dict__, "lr": 0.01})  # agreeing options apply


@pytest.mark.parametrize(
    ("lofi", "freeze_bn", "message"),
    [
        ({"name": "adam"}, None, "--optimizer adam trains with adam contradicts the plan's optimizer sgd"),
        ({"momentum": 0.9}, None, "--momentum 0.9 trains with sgd_momentum contradicts the plan's optimizer sgd"),
        ({}, False, "--train-bn contradicts the plan's batchnorm frozen"),
    ],
)
def test_contradicting_the_plan_is_an_error_naming_both(lofi, freeze_bn, message):
    with pytest.raises(OptionError, match=message):
        follow_plan(tiny_candidate(optimizer="sgd", batchnorm="frozen"), LOFI_RECIPE, lofi, freeze_bn)


def test_override_uses_the_users_choice_and_says_so():
    recipe, frozen, overridden = follow_plan(tiny_candidate(optimizer="sgd", batchnorm="frozen"), LOFI_RECIPE,
                                             {"name": "adam"}, False, override=True)
    assert recipe.name == "adam" and frozen is False
    assert overridden == ("optimizer: sgd -> adam", "batchnorm: frozen -> trained")


def test_alloc_conf_goes_into_the_environment(monkeypatch):
    monkeypatch.setenv(ENV, "max_split_size_mb:128,expandable_segments:False")
    assert apply_alloc_conf("expandable_segments:True") == "max_split_size_mb:128,expandable_segments:True"
    assert os.environ[ENV] == "max_split_size_mb:128,expandable_segments:True"
    assert apply_alloc_conf(None) == os.environ[ENV]  # the default allocator: left alone
    assert merged_setting(None, "expandable_segments:True") == "expandable_segments:True"


def test_the_run_config_records_the_allocator_setting_and_overrides():
    from lofi.train.config import DataConfig, config_to_dict
    from lofi.train.setup import RecipeOverrides, ResolvedData, build_config
    from train_helpers import tiny_plan

    plan = tiny_plan(tiny_candidate(expandable_segments=True, optimizer="sgd", batchnorm="frozen"))
    resolved = ResolvedData(DataConfig(annotations="a.json", media_root="videos"), synthetic=False, training_videos=4)
    config = build_config(resolved, plan, RecipeOverrides(lofi={"name": "adam"}, config={"override_plan": True}),
                          pretrained=None, baseline=False)
    recorded = config_to_dict(config)
    assert recorded["alloc_conf"] == "expandable_segments:True"
    assert list(recorded["plan_overrides"]) == ["optimizer: sgd -> adam"]
    assert recorded["freeze_bn"] is True  # the plan's BatchNorm mode, not the random-init default
    with pytest.raises(OptionError, match="contradicts the plan's optimizer sgd"):
        build_config(resolved, plan, RecipeOverrides(lofi={"name": "adam"}), pretrained=None, baseline=False)
