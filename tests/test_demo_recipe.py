"""Tier 1: the recipe `make train` runs (conf/model/tiny.yaml + conf/model_tuning/tiny.yaml) holds the choices
the README's demo section explains: the random CLIP tower stays frozen, the projector, embeddings and lm_head
train whole, three epochs with one validation at the end of each, and val/test splits large enough for a
verdict.

How well the demo learns is measured (README, "The demo learns"), not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from phi3v.config_schema import register_schemas
from phi3v.modeling.model_spec import load_base_model
from phi3v.training.lora import apply_lora
from phi3v.training.reporting import MIN_JUDGED

pytestmark = pytest.mark.config

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def demo():
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield compose("train"), compose("train", overrides=["experiment=demo"])


def test_make_train_is_the_demo_experiment(demo):
    default, experiment = demo
    for key in ("model", "data", "optimizer", "scheduler", "hardware", "trainer"):
        assert default[key] == experiment[key], key


def test_the_random_clip_tower_stays_frozen_and_the_rest_of_the_image_path_trains(demo):
    cfg, _ = demo
    model = apply_lora(load_base_model(OmegaConf.to_object(cfg.model.spec)), OmegaConf.to_object(cfg.model.lora))
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    # CLIP's random features keep the silhouettes (nearest-centroid 0.55 on them vs 0.64 on pixels); trained
    # whole at the demo's lr they lost separability (0.47) and the category was learned later
    assert not [name for name in trainable if ".img_processor." in name]
    for part in ("img_projection", "lm_head", "embed_tokens", "lora_A"):
        assert any(part in name for name in trainable), part


def test_one_validation_per_epoch_on_splits_large_enough_to_judge(demo):
    cfg, _ = demo
    # each validation generates 150 answers (~4 s): one per epoch gives the learning curve its 3 points
    assert cfg.trainer.val_check_interval == 1.0 and cfg.trainer.max_epochs == 3 and cfg.trainer.max_steps == -1
    assert (cfg.optimizer.lr, cfg.data.batch_size) == (1.0e-3, 2)  # the most updates that fit in 5 min
    assert cfg.data.val_limit is None  # every validation scores the whole val split
    products = cfg.data.synthetic.num_products
    for fraction in (cfg.data.val_fraction, cfg.data.test_fraction):
        assert products * fraction >= 4 * MIN_JUDGED  # 150 products each: a verdict, not noise
