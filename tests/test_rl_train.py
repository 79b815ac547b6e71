"""``segresearch train``: the presets compose onto verl's ppo_trainer, and a dry run catches
what would otherwise fail only after the GPU job has started."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="the rl extra (verl) is not installed")
yaml = pytest.importorskip("yaml")

from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from segresearch.rl import train  # noqa: E402

HAVE_AGENT_LOOP = importlib.util.find_spec("segresearch.rl.agent_loop") is not None
NEEDS_AGENT_LOOP = pytest.mark.skipif(
    not HAVE_AGENT_LOOP, reason="segresearch.rl.agent_loop is not written yet")


@pytest.fixture(autouse=True)
def _own_hydra_state(own_hydra_state):
    """Every test here runs with its own Hydra state (conftest.py)."""


def dry(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train.main(["--dry-run", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def grpo():
    code, out, err = dry()
    return code, yaml.safe_load(out), err


@pytest.fixture(scope="module")
def dapo():
    code, out, err = dry("--preset", "dapo")
    return code, yaml.safe_load(out), err


@pytest.fixture(scope="module")
def dapo_full():
    code, out, err = dry("--preset", "dapo-full")
    return code, yaml.safe_load(out), err


def check_recipe(c: dict) -> None:
    arr = c["actor_rollout_ref"]
    assert c["algorithm"]["adv_estimator"] == "grpo"
    assert c["algorithm"]["use_kl_in_reward"] is False
    assert arr["rollout"]["n"] == 8 and arr["rollout"]["temperature"] == 1.0
    assert arr["rollout"]["name"] == "vllm" and arr["rollout"]["mode"] == "async"
    assert c["data"]["train_batch_size"] == 16 and arr["actor"]["ppo_mini_batch_size"] == 8
    assert arr["actor"]["optim"]["lr"] == 1e-6 and arr["actor"]["optim"]["lr_warmup_steps"] == 10
    # published: the KL loss on with coefficient 0 (a reference model, no KL in the gradient)
    assert arr["actor"]["use_kl_loss"] is True and arr["actor"]["kl_loss_coef"] == 0
    assert arr["actor"]["entropy_coeff"] == 0
    # the rollout's lengths are interpolated from data.*; printed resolved
    assert (arr["rollout"]["prompt_length"], arr["rollout"]["response_length"]) == (2048, 8192)
    assert arr["rollout"]["multi_turn"]["max_tool_response_length"] == 4096
    assert c["trainer"]["total_training_steps"] == 100
    assert arr["model"]["path"] == "Qwen/Qwen3-VL-4B-Instruct"
    assert arr["model"]["external_lib"] == "segresearch.rl.agent_loop"
    agent = arr["rollout"]["agent"]
    assert agent["default_agent_loop"] in ("seg_research_agent", "seg_research_agent_mask_overlong")
    assert Path(agent["agent_loop_config_path"]).is_absolute()
    assert Path(agent["agent_loop_config_path"]).is_file()
    reward = c["reward"]["custom_reward_function"]
    assert reward["name"] == "compute_score"
    assert Path(reward["path"]).is_file() and Path(reward["path"]).name == "reward.py"
    assert Path(c["data"]["train_files"]).parts[-3:] == ("okvos", "verl", "train.parquet")
    assert Path(c["data"]["val_files"]).parts[-3:] == ("okvos", "verl", "test.parquet")


@NEEDS_AGENT_LOOP


def test_grpo_dry_run_passes_with_the_published_recipe(grpo):
    code, c, err = grpo
    assert code == 0, err
    check_recipe(c)
    assert c["algorithm"]["filter_groups"]["enable"] is False
    assert "dry run: ok" in err
    if importlib.util.find_spec("vllm") is None:  # CPU machine: a warning, not a failure
        assert "warning: rollout engine vllm is not installed" in err


@NEEDS_AGENT_LOOP
def test_dapo_dry_run_is_the_same_recipe_plus_clip_higher(dapo):
    """The published DAPO run as its trainer ran it: no group filtering, no overlong masking."""
    code, c, err = dapo
    assert code == 0, err
    check_recipe(c)
    assert c["algorithm"]["filter_groups"]["enable"] is False
    actor = c["actor_rollout_ref"]["actor"]
    assert (actor["clip_ratio_low"], actor["clip_ratio_high"]) == (0.2, 0.3)
    assert actor["loss_agg_mode"] == "token-mean"
    assert c["trainer"]["experiment_name"] != "qwen3vl_4b_grpo"
    assert c["actor_rollout_ref"]["rollout"]["agent"]["default_agent_loop"] == "seg_research_agent"
    assert "published_unused" not in c  # notes, not verl settings


@NEEDS_AGENT_LOOP
def test_dapo_full_dry_run_adds_group_filtering_and_overlong_masking(dapo_full):
    code, c, err = dapo_full
    assert code == 0, err
    check_recipe(c)
    fg = c["algorithm"]["filter_groups"]
    assert fg["enable"] is True and fg["metric"] == "reward"
    assert c["actor_rollout_ref"]["actor"]["clip_ratio_high"] == 0.3
    assert c["trainer"]["use_v1"] is True  # filter_groups exists only in V1
    # overlong masking: the agent-loop entry that has it on
    assert c["actor_rollout_ref"]["rollout"]["agent"]["default_agent_loop"] == \
        "seg_research_agent_mask_overlong"


def test_show_preset_prints_the_config_and_what_the_script_set_unread():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train.main(["--preset", "dapo", "--show-preset"]) == train.EXIT_OK
    doc = yaml.safe_load(out.getvalue())
    assert doc["algorithm"]["filter_groups"]["enable"] is False
    unused = {e["key"]: e["script"] for e in doc["published_unused"]}
    assert unused["+algorithm.filter_groups.enable"] is True
    assert unused["actor_rollout_ref.agent.mask_overlong_loss"] is True


@NEEDS_AGENT_LOOP
def test_overrides_show_up_and_may_follow_options():
    code, out, err = dry("trainer.total_training_steps=3", "data.train_batch_size=4",
                         "actor_rollout_ref.rollout.multi_turn.max_tool_response_length=2048")
    assert code == 0, err
    c = yaml.safe_load(out)
    assert c["trainer"]["total_training_steps"] == 3 and c["data"]["train_batch_size"] == 4
    # the agent-loop YAML is read on its own by the workers, so the mismatch is flagged
    assert "caps observations at 4096 tokens" in err and "2048" in err


def test_bad_override_key_fails_clearly_before_printing():
    code, out, err = dry("trainer.no_such_key=1")
    assert code == train.EXIT_USAGE and out == ""
    assert "trainer.no_such_key" in err and "not in struct" in err
    code, out, err = dry("trainer.total_training_steps")  # no '='
    assert code == train.EXIT_USAGE and "trainer.total_training_steps" in err


def test_every_failure_is_reported_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = dry("actor_rollout_ref.model.external_lib=segresearch.no_such_lib",
                         "reward.custom_reward_function.path=missing_reward.py",
                         "actor_rollout_ref.rollout.agent.default_agent_loop=nobody",
                         "algorithm.kl_ctrl._target_=verl.trainer.config.NoSuchConfig")
    assert code == train.EXIT_CHECK_FAILED
    assert yaml.safe_load(out)["reward"]["custom_reward_function"]["path"] == str(
        tmp_path / "missing_reward.py")  # relative paths pinned for remote workers
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert any("No module named 'segresearch.no_such_lib'" in e for e in errors), err
    assert any(str(tmp_path / "missing_reward.py") in e for e in errors), err
    assert any("default_agent_loop='nobody'" in e for e in errors), err
    assert any("verl.trainer.config.NoSuchConfig (_target_ of algorithm.kl_ctrl)" in e
               for e in errors), err
    assert "training would not start" in err


def test_locate_names_the_missing_module():
    assert train.locate("json.JSONDecoder") is json.JSONDecoder
    with pytest.raises(ModuleNotFoundError) as e:
        train.locate("segresearch.rl.no_such_module.Thing")
    assert e.value.name == "segresearch.rl.no_such_module"
    with pytest.raises(AttributeError):
        train.locate("json.NoSuchThing")


def test_preset_keys_all_exist_in_verl():
    """Hydra silently adds a misspelt key; every key the presets set must be verl's."""
    import verl
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"),
                               version_base=None):
        base = compose(config_name="ppo_trainer")

    def leaves(node, prefix=""):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                yield from leaves(v, key + ".")
            else:
                yield key

    names = sorted(p.stem for p in train.CONFIG_DIR.glob("seg_research_*.yaml"))
    names.remove("seg_research_agent")  # the agent-loop list, not a verl config
    assert {"seg_research_recipe", "seg_research_dapo_recipe", *train.PRESETS.values()} <= set(names)
    for name in names:
        doc = yaml.safe_load((train.CONFIG_DIR / f"{name}.yaml").read_text())
        keys = [k for k in leaves(doc) if k.split(".")[0] not in ("hydra", "defaults", train.UNUSED_KEY)]
        assert keys
        for key in keys:
            if key.startswith("actor_rollout_ref.rollout.engine_kwargs.vllm."):
                continue  # passed through to vLLM's engine arguments, not a verl key
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
            assert isinstance(node, DictConfig), f"{name}: {key}"
            # `in` is False for verl's mandatory `???` values, which do exist
            assert leaf in node or OmegaConf.is_missing(node, leaf), f"{name}: {key}"


def test_agent_loop_yaml_lists_the_loop_with_its_defaults():
    entries = OmegaConf.load(train.AGENT_LOOP_CONFIG)
    assert isinstance(entries, ListConfig) and len(entries) == 3
    assert all(isinstance(e, DictConfig) for e in entries)
    env = {k: os.environ.pop(k) for k in ("SEGRESEARCH_SEARCH", "SEGRESEARCH_KB") if k in os.environ}
    try:
        grpo, dapo, tools = (OmegaConf.to_container(e, resolve=True) for e in entries)
    finally:
        os.environ.update(env)
    assert grpo == {
        "name": "seg_research_agent", "_target_": "segresearch.rl.agent_loop.SegResearchAgentLoop",
        "search": "local", "kb": "", "max_turns": 6, "coord_style": "qwen3", "frame_size": 448,
        "keyframe_size": 864, "search_image_size": 256, "max_observation_tokens": 4096,
        "response_budget": "published", "max_action_tokens": 4096, "mask_overlong_loss": False,
        "postprocess_cache": True, "postprocess_cache_mb": 512}
    # the dapo-full entry is the same loop with overlong masking on, nothing else
    assert dapo == {**grpo, "name": "seg_research_agent_mask_overlong", "mask_overlong_loss": True}
    # the tools entry is the same loop acting through native tool calls, nothing else
    assert tools == {**grpo, "name": "seg_research_agent_tools", "protocol": "tools"}


@NEEDS_AGENT_LOOP
def test_agent_loop_target_imports_and_accepts_every_setting():
    entries = OmegaConf.to_container(OmegaConf.load(train.AGENT_LOOP_CONFIG))
    entry = entries[0]
    for e in entries:
        cls = train.locate(e["_target_"])
        params = inspect.signature(cls.__init__).parameters
        # the Context fields an entry may set arrive through **kwargs too
        settings = sys.modules[cls.__module__].SETTING_FIELDS
        for key in e:
            if key not in ("_target_", "name"):  # name arrives through **kwargs
                assert key in params or key in settings, f"{cls.__name__}.__init__ has no {key!r}"
    # external_lib works because importing the module registers the name with verl
    from segresearch.compat.verl import agent_loop_registry

    assert agent_loop_registry()["seg_research_agent"]["_target_"] == entry["_target_"]


def test_launch_hands_the_composed_config_to_verl(monkeypatch):
    from verl.trainer import main_ppo

    got = []
    monkeypatch.setattr(main_ppo.main, "__wrapped__", got.append)
    # This CPU machine has no vLLM or CUDA: the real environment check stops the launch
    # before verl is called, with exit 2 and one line per problem.
    assert train.main(["trainer.total_training_steps=2"]) == train.EXIT_USAGE
    assert got == []
    monkeypatch.setattr(train, "check_trainer_environment", lambda cfg: [])
    assert train.main(["trainer.total_training_steps=2"]) == 0
    (cfg,) = got
    assert cfg.trainer.total_training_steps == 2
    assert Path(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path) == train.AGENT_LOOP_CONFIG
    # DAPO on the legacy trainer would silently drop the filtering: refused before verl runs
    assert train.main(["--preset", "dapo-full", "trainer.use_v1=false"]) == train.EXIT_CHECK_FAILED
    assert len(got) == 1


@NEEDS_AGENT_LOOP
@pytest.mark.slow  # a fresh interpreter importing verl; the dry run itself is tested in process above
def test_cli_train_dry_run():
    r = subprocess.run([sys.executable, "-m", "segresearch", "train", "--dry-run",
                        "trainer.total_training_steps=7"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    c = yaml.safe_load(r.stdout)
    assert c["algorithm"]["adv_estimator"] == "grpo" and c["trainer"]["total_training_steps"] == 7


def test_missing_gpu_side_modules_warn_and_others_fail():
    report = train.Report()
    report.import_failed("cannot import a.B", ModuleNotFoundError("No module named 'vllm.v1'",
                                                                   name="vllm.v1"))
    report.import_failed("cannot import c.D", ModuleNotFoundError("No module named 'numpyy'",
                                                                   name="numpyy"))
    assert len(report.warnings) == 1 and "vllm is not installed here" in report.warnings[0]
    assert len(report.errors) == 1 and "numpyy" in report.errors[0]


def test_composes_while_another_library_holds_hydra():
    """sam2 initialises Hydra's global state when imported; composing must still work and
    leave that state as it was."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from segresearch.rl.train import compose_config

    initialize_config_module("verl.trainer.config", version_base=None)
    cfg = compose_config("grpo", ["trainer.total_training_steps=2"])
    assert cfg.trainer.total_training_steps == 2
    assert GlobalHydra.instance().is_initialized()
