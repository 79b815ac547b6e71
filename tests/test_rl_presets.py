"""The training presets equal the published Seg-ReSearch 4B runs.

The tables below are the values of examples/train/okvos/train_4b.sh (GRPO) and
train_4b_dapo.sh (DAPO) of iSEE-Laboratory/Seg-ReSearch, written out by hand (nothing is read
from that repository at test time), each under the verl 0.9.1 key that carries it, as the
published trainer READ them: verl-tool's AgentRayPPOTrainer and agent loop. Where a script
sets a key that nothing read, the table holds the value that took effect and its note says
so (PUBLISHED_RUN); the preset lists the script's value under published_unused. Every
setting of the scripts is in a table, in UNREAD or in DELIBERATE, with the reason it
differs; the README's "RL (verl)" section lists the same differences. Any drift of a preset
fails here. ``dapo-full`` (real DAPO) is not a published run and is checked on its own.
"""

from __future__ import annotations

import pytest

pytest.importorskip("verl", reason="the rl extra (verl) is not installed")

from omegaconf import OmegaConf  # noqa: E402

from segresearch.rl import train  # noqa: E402

# Both scripts.
PUBLISHED_COMMON = {
    "algorithm.adv_estimator": "grpo",
    "algorithm.kl_ctrl.kl_coef": 0,
    "data.train_batch_size": 16,
    "data.max_prompt_length": 2048,
    "data.max_response_length": 8192,
    "data.filter_overlong_prompts": True,
    "data.truncation": "right",
    "actor_rollout_ref.model.path": "Qwen/Qwen3-VL-4B-Instruct",
    "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    "actor_rollout_ref.model.use_remove_padding": True,
    "actor_rollout_ref.model.trust_remote_code": True,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.optim.lr_warmup_steps": 10,
    "actor_rollout_ref.actor.checkpoint.save_contents": ["model", "optimizer", "extra", "hf_model"],
    "actor_rollout_ref.actor.ppo_mini_batch_size": 8,
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 1,
    "actor_rollout_ref.actor.use_dynamic_bsz": True,
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.strategy": "fsdp2",
    "actor_rollout_ref.actor.kl_loss_coef": 0.0,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.actor.entropy_coeff": 0,
    "actor_rollout_ref.actor.fsdp_config.param_offload": False,
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
    "actor_rollout_ref.actor.fsdp_config.fsdp_size": -1,
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size": 1,
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 2048 + 8192,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
    "actor_rollout_ref.rollout.enforce_eager": False,
    "actor_rollout_ref.rollout.free_cache_engine": True,
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.4,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.top_p": 1.0,
    "actor_rollout_ref.rollout.top_k": -1,
    "actor_rollout_ref.rollout.n": 8,
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": True,
    "actor_rollout_ref.rollout.max_num_seqs": 512,
    "actor_rollout_ref.rollout.mode": "async",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz": True,
    "actor_rollout_ref.ref.fsdp_config.param_offload": False,
    "actor_rollout_ref.ref.ulysses_sequence_parallel_size": 1,
    "critic.optim.lr": 1e-5,
    "critic.strategy": "fsdp2",
    "critic.model.path": "Qwen/Qwen3-VL-4B-Instruct",
    "critic.fsdp.fsdp_size": -1,  # published critic.model.fsdp_config.fsdp_size
    "critic.ppo_micro_batch_size_per_gpu": 1,
    "critic.ulysses_sequence_parallel_size": 1,
    "trainer.val_before_train": False,
    "trainer.default_hdfs_dir": None,
    "trainer.n_gpus_per_node": 8,
    "trainer.resume_mode": "auto",
    "trainer.nnodes": 1,
    "trainer.save_freq": 10,
    "trainer.total_training_steps": 100,
    # agent.max_turns / agent.max_obs_length (seg_research_agent.yaml holds the loop's copies)
    "actor_rollout_ref.rollout.multi_turn.max_tool_response_length": 4096,
    # +actor_rollout_ref.rollout.engine_kwargs.vllm.disable_mm_preprocessor_cache=True
    "actor_rollout_ref.rollout.engine_kwargs.vllm.mm_processor_cache_gb": 0,
    # +trainer.remove_previous_ckpt_in_save=True
    "trainer.max_actor_ckpt_to_keep": 1,
    "trainer.max_critic_ckpt_to_keep": 1,
}

UNREAD = "script sets it, trainer never reads it"
# What the published runs trained with, where it is not simply "the script's value":
# (key, value that took effect per preset, note). "agent.*" keys are the agent-loop entry
# the preset selects in seg_research_agent.yaml (verl-tool's actor_rollout_ref.agent.*).
PUBLISHED_RUN: list[tuple[str, dict[str, object], str]] = [
    ("algorithm.adv_estimator", {"grpo": "grpo", "dapo": "grpo"}, "both scripts: rl_alg=grpo"),
    ("actor_rollout_ref.actor.clip_ratio_low", {"grpo": 0.2, "dapo": 0.2}, "grpo: verl default"),
    ("actor_rollout_ref.actor.clip_ratio_high", {"grpo": 0.2, "dapo": 0.3},
     "clip-higher: the one algorithmic change of the DAPO run; grpo: verl default"),
    ("actor_rollout_ref.actor.loss_agg_mode", {"grpo": "token-mean", "dapo": "token-mean"},
     "grpo: verl default"),
    ("algorithm.filter_groups.enable", {"grpo": False, "dapo": False},
     f"dapo: {UNREAD} (script: True; AgentRayPPOTrainer.fit has no dynamic sampling)"),
    ("agent.mask_overlong_loss", {"grpo": False, "dapo": False},
     f"dapo: {UNREAD} (script: True; declared in AgentActorConfig, read nowhere)"),
    ("agent.response_budget", {"grpo": "published", "dapo": "published"},
     "verl-tool loop: max_tokens = min(max_action_length, max_response_length - len(prompt + response))"),
    ("agent.max_action_tokens", {"grpo": 4096, "dapo": 4096}, "agent.max_action_length, read per turn"),
    ("agent.max_turns", {"grpo": 6, "dapo": 6}, "agent.max_turns"),
    ("agent.max_observation_tokens", {"grpo": 4096, "dapo": 4096}, "agent.max_obs_length"),
    ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", {"grpo": 4, "dapo": 1}, ""),
    ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", {"grpo": 4, "dapo": 1}, ""),
    ("trainer.test_freq", {"grpo": 10, "dapo": 0}, ""),
    ("data.val_batch_size", {"grpo": None, "dapo": 96}, "grpo: unset (verl default)"),
]

# Per preset: the scripts' settings that nothing read, with the script's value; each preset
# lists exactly these under published_unused (key as the script spells it).
UNREAD_BY_PRESET = {
    "grpo": {
        "actor_rollout_ref.agent.max_start_length": 2048,
        "actor_rollout_ref.agent.additional_eos_token_ids": [151645],
    },
    "dapo": {
        "+algorithm.filter_groups.enable": True,
        "+algorithm.filter_groups.metric": "seq_final_reward",
        "+algorithm.filter_groups.max_num_gen_batches": 0,
        "actor_rollout_ref.agent.mask_overlong_loss": True,
        "actor_rollout_ref.agent.max_start_length": 2048,
        "actor_rollout_ref.agent.additional_eos_token_ids": [151645],
    },
}

PUBLISHED = {
    preset: {**PUBLISHED_COMMON, **{key: values[preset] for key, values, _ in PUBLISHED_RUN}}
    for preset in ("grpo", "dapo")
}

# Published settings carried differently, each with the value we set instead.
DELIBERATE = {
    # the scripts log to wandb, which needs an account
    "trainer.logger": ["console"],
    # the scripts name runs after their timestamp and reward manager
    "trainer.project_name": "seg_research",
}


@pytest.fixture(autouse=True)
def _own_hydra_state(own_hydra_state):
    """Every test here runs with its own Hydra state (conftest.py)."""


def _agent_entry(cfg) -> dict:
    name = cfg.actor_rollout_ref.rollout.agent.default_agent_loop
    entries = OmegaConf.to_container(OmegaConf.load(train.AGENT_LOOP_CONFIG), resolve=False)
    (entry,) = [e for e in entries if e["name"] == name]
    return entry


def _value(cfg, entry: dict, key: str):
    if key.startswith("agent."):
        return entry.get(key.removeprefix("agent."), "<unset>")
    got = OmegaConf.select(cfg, key, default="<unset>")
    return OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got


def _drift(cfg, table: dict) -> dict:
    entry = _agent_entry(cfg)
    drift = {}
    for key, want in table.items():
        got = _value(cfg, entry, key)
        if got != want or type(got) is not type(want) and not isinstance(want, float):
            drift[key] = (got, want)
    return drift


@pytest.mark.parametrize("preset", ["grpo", "dapo"])
def test_preset_equals_the_published_run(preset):
    drift = _drift(train.compose_config(preset), {**PUBLISHED[preset], **DELIBERATE})
    assert not drift, "preset differs from the published run (got, published): " + repr(drift)


@pytest.mark.parametrize("preset", ["grpo", "dapo"])
def test_preset_lists_what_its_script_set_but_nothing_read(preset):
    listed = {e["key"]: e["script"] for e in train.published_unused(preset)}
    assert listed == UNREAD_BY_PRESET[preset]
    assert all(e.get("why") for e in train.published_unused(preset))
    # the listed settings are notes, not verl settings: verl never sees the section
    cfg = train.compose_config(preset)
    assert train.UNUSED_KEY not in cfg


def test_the_dapo_run_was_grpo_with_clip_higher():
    """The published "DAPO" run differs from the GRPO run in clip_ratio_high (and batch
    sizes / test frequency) only: no group filtering, no overlong masking."""
    grpo, dapo = (train.compose_config(p) for p in ("grpo", "dapo"))
    assert dapo.algorithm.filter_groups.enable is False
    assert _agent_entry(dapo)["mask_overlong_loss"] is False
    assert _agent_entry(dapo) == _agent_entry(grpo)
    changed = {key for key, values, _ in PUBLISHED_RUN if values["grpo"] != values["dapo"]}
    assert changed == {"actor_rollout_ref.actor.clip_ratio_high",
                       "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                       "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
                       "trainer.test_freq", "data.val_batch_size"}


def test_dapo_full_is_dapo_plus_dynamic_sampling_and_overlong_masking():
    dapo, full = train.compose_config("dapo"), train.compose_config("dapo-full")
    fg = full.algorithm.filter_groups
    assert (fg.enable, fg.metric, fg.max_num_gen_batches) == (True, "reward", 0)
    assert full.trainer.use_v1 is True  # filter_groups exists only in verl's V1 trainer
    assert _agent_entry(full) == {**_agent_entry(dapo), "name": "seg_research_agent_mask_overlong",
                                  "mask_overlong_loss": True}
    drift = _drift(full, {k: v for k, v in PUBLISHED["dapo"].items()
                          if k not in ("algorithm.filter_groups.enable", "agent.mask_overlong_loss")})
    assert not drift, drift
    assert full.trainer.experiment_name != dapo.trainer.experiment_name


@pytest.mark.parametrize("preset", sorted(train.PRESETS))
def test_group_filter_metric_equals_the_published_one_only_without_kl_in_reward(preset):
    cfg = train.compose_config(preset)
    assert cfg.algorithm.use_kl_in_reward is False and cfg.algorithm.kl_ctrl.kl_coef == 0


@pytest.mark.parametrize("name", sorted(p.stem for p in train.CONFIG_DIR.glob("seg_research_*.yaml")))
def test_no_setting_verl_ignores(name):
    """verl's own multi-turn switch is read only by its tool agent loop, not ours: the preset
    must not pretend to set it."""
    import yaml

    doc = yaml.safe_load((train.CONFIG_DIR / f"{name}.yaml").read_text())
    if isinstance(doc, dict):  # the agent-loop file is a list
        multi_turn = doc.get("actor_rollout_ref", {}).get("rollout", {}).get("multi_turn", {})
        assert "enable" not in multi_turn, name
