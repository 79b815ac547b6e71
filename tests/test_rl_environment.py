"""The trainer's environment check and the attention fallback, on this CPU machine.

The machine is changed for real where it can be: packages and distributions are written to a
temporary folder on ``sys.path`` (a vLLM whose metadata pins another torch, a flash-attn that
fails to import, a TransferQueue), so discovery, metadata and imports are Python's own. Only
CUDA, which this machine lacks, is switched on through ``torch.cuda``'s functions.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("hydra")
torch = pytest.importorskip("torch")

from segresearch.rl import environment as env  # noqa: E402
from segresearch.rl.train import compose_config  # noqa: E402

ACTOR_ATTN = "actor_rollout_ref.model.override_config.attn_implementation"
ACTOR_RMPAD = "actor_rollout_ref.model.use_remove_padding"
CRITIC_ATTN = "critic.model.override_config.attn_implementation"


@pytest.fixture(scope="module")
def base_cfg():
    return compose_config("grpo", ["trainer.n_gpus_per_node=1"])


@pytest.fixture
def cfg(base_cfg):
    return copy.deepcopy(base_cfg)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path to install packages into by writing files."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    for name in ("vllm", "flash_attn", "transfer_queue", "sglang"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return folder


def install(site: Path, module: str, dist: str = "", version: str = "0.0.1",
            requires: tuple[str, ...] = (), body: str = "") -> None:
    """A package ``module`` and, with ``dist``, its distribution metadata."""
    (site / module).mkdir()
    (site / module / "__init__.py").write_text(body)
    if dist:
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        lines = ["Metadata-Version: 2.1", f"Name: {dist}", f"Version: {version}",
                 *(f"Requires-Dist: {r}" for r in requires)]
        (info / "METADATA").write_text("\n".join(lines) + "\n")


@pytest.fixture
def gpus(monkeypatch):
    """CUDA with ``n`` devices, as torch would report it on a GPU machine."""

    def set_gpus(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_gpus


def engine_and_queue(site: Path) -> None:
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    install(site, "vllm", "vllm", "0.24.0", (torch_pin,))
    install(site, "transfer_queue", "TransferQueue", "0.1.11")


# ------------------------------------------------------------------------------ config


def test_select_reads_dictconfig_and_plain_dicts(cfg):
    assert env.select(cfg, "actor_rollout_ref.rollout.name") == "vllm"
    assert env.select(cfg, ACTOR_ATTN) is None  # verl's override_config is an empty mapping
    assert env.select(cfg, "no.such.key", 7) == 7
    assert env.select({"a": {"b": 1}}, "a.b") == 1
    assert env.configured_attention(cfg) == "flash_attention_2"  # verl's own default


def test_needs_follow_the_rollout_engine_and_the_v1_trainer(cfg):
    names = [n.module for n in env.trainer_needs(cfg)]
    assert names == ["verl", "ray", "torch", "transformers", "vllm", "transfer_queue"]
    cfg.actor_rollout_ref.rollout.name = "sglang"
    cfg.trainer.use_v1 = False
    assert [n.module for n in env.trainer_needs(cfg)][-1] == "sglang"
    cfg.transfer_queue.enable = True  # the legacy trainer with TransferQueue switched on
    assert env.trainer_needs(cfg)[-1] is env.TRANSFER_QUEUE


def test_missing_engine_and_transfer_queue_are_named_with_their_install(cfg, site, gpus):
    gpus(1)
    problems = env.check_trainer_environment(cfg)
    assert any(p.startswith("vllm is not installed") and "segresearch[hf,rl,gpu]" in p
               for p in problems)
    assert any(p.startswith("transfer_queue is not installed") and "trainer.use_v1" in p
               for p in problems)
    engine_and_queue(site)
    problems = env.check_trainer_environment(cfg)
    assert not any("not installed" in p and "flash" not in p for p in problems), problems


def test_unknown_engine(cfg):
    cfg.actor_rollout_ref.rollout.name = "tgi"
    assert any("rollout.name='tgi'" in p for p in env.check_trainer_environment(cfg))


# ------------------------------------------------------------------------------ versions


def test_a_vllm_built_for_another_torch_is_reported(cfg, site, gpus):
    gpus(1)
    install(site, "vllm", "vllm", "0.31.0", ("torch==1.0.0", "transformers<1",
                                              'torchaudio==0.1; extra == "audio"'))
    problems = env.pin_problems("vllm")
    have = torch.__version__
    assert problems == [
        f"vllm 0.31.0 requires torch==1.0.0 but torch {have} is installed "
        "(pip install 'segresearch[hf,rl,gpu]' installs the pairing verl 0.9.1 tested)",
        f"vllm 0.31.0 requires transformers<1 but transformers "
        f"{env.installed_version('transformers')} is installed "
        "(pip install 'segresearch[hf,rl,gpu]' installs the pairing verl 0.9.1 tested)",
    ]  # the optional extra's pin is not the installation's business
    assert [p for p in env.check_trainer_environment(cfg) if p.startswith("vllm 0.31.0")] == problems


def test_matching_pins_and_local_version_labels_pass(site):
    # torch's own version carries a local label (+cpu, +cu130) that == pins ignore
    install(site, "vllm", "vllm", "0.24.0", (f"torch=={torch.__version__.split('+')[0]}",))
    assert env.pin_problems("vllm") == []
    assert env.pin_problems("not-installed-anywhere") == []
    assert env.pin_problems("verl") == []  # verl 0.9.1 pins transformers<5.11; 5.10 is here


# ------------------------------------------------------------------------------ devices


def test_cuda_is_required_when_the_config_asks_for_it(cfg, gpus):
    gpus(0)
    (problem,) = env.cuda_problems(cfg)
    assert problem.startswith("trainer.device=cuda but torch")
    assert ("CPU-only" in problem) == (torch.version.cuda is None)
    gpus(1)
    assert env.cuda_problems(cfg) == []
    cfg.trainer.n_gpus_per_node = 8
    assert env.cuda_problems(cfg) == ["trainer.n_gpus_per_node=8 but this machine has 1 GPU(s)"]
    cfg.trainer.nnodes = 2  # other nodes hold the rest; Ray places them
    assert env.cuda_problems(cfg) == []
    gpus(0)
    cfg.trainer.device = "npu"
    assert env.cuda_problems(cfg) == []


# ------------------------------------------------------------------------------ attention


def test_attention_falls_back_to_sdpa_without_a_working_flash_attn(site, gpus):
    gpus(1)
    assert env.attention_implementation() == "sdpa"  # not installed
    assert "not installed" in env.flash_attn_problem()
    install(site, "flash_attn", body="raise ImportError('undefined symbol: _ZN3c104cuda9SetDevice')\n")
    assert env.attention_implementation() == "sdpa"  # built for another torch
    assert "undefined symbol" in env.flash_attn_problem()


def test_attention_uses_flash_attn_where_it_imports_with_cuda(site, gpus):
    install(site, "flash_attn", body="__version__ = '2.8.3'\n")
    gpus(0)
    assert env.attention_implementation() == "sdpa"
    assert "CUDA" in env.flash_attn_problem()
    gpus(1)
    assert env.flash_attn_problem() is None
    assert env.attention_implementation() == "flash_attention_2"


def test_overrides_compose_with_hydra():
    overrides = env.attention_overrides("sdpa", [env.ACTOR_MODEL, env.CRITIC_MODEL])
    assert overrides == [f"++{ACTOR_ATTN}=sdpa", f"++{ACTOR_RMPAD}=false",
                         f"++{CRITIC_ATTN}=sdpa", "++critic.model.use_remove_padding=false"]
    cfg = compose_config("grpo", overrides)
    assert env.configured_attention(cfg) == "sdpa" and cfg.actor_rollout_ref.model.use_remove_padding is False
    assert env.configured_attention(cfg, env.CRITIC_MODEL) == "sdpa"
    assert env.attention_overrides("flash_attention_2") == [f"++{ACTOR_ATTN}=flash_attention_2"]
    # a second ++ wins, as a user's own override given after ours would
    cfg = compose_config("grpo", [*overrides, f"++{ACTOR_ATTN}=eager"])
    assert env.configured_attention(cfg) == "eager"


def test_apply_sets_only_what_the_user_left_to_verl(cfg):
    assert env.apply_attention_implementation(cfg, "sdpa") == [f"{ACTOR_ATTN}=sdpa", f"{ACTOR_RMPAD}=false"]
    assert env.configured_attention(cfg) == "sdpa"
    assert cfg.actor_rollout_ref.model.use_remove_padding is False
    assert env.apply_attention_implementation(cfg, "flash_attention_2") == []  # chosen now
    chosen = compose_config("grpo", [f"++{ACTOR_ATTN}=eager"])
    assert env.apply_attention_implementation(chosen, "sdpa") == []
    assert env.configured_attention(chosen) == "eager"


def test_apply_covers_the_critic_when_verl_builds_one():
    gae = compose_config("grpo", ["algorithm.adv_estimator=gae"])
    made = env.apply_attention_implementation(gae, "sdpa")
    assert f"{CRITIC_ATTN}=sdpa" in made and "critic.model.use_remove_padding=false" in made
    assert env.model_sections(gae) == [env.ACTOR_MODEL, env.CRITIC_MODEL]


def test_attention_problems(cfg, site, gpus):
    gpus(1)
    (problem,) = env.attention_problems(cfg)
    assert problem.startswith(f"{ACTOR_ATTN}=flash_attention_2 (verl's default) but flash_attn")
    assert f"++{ACTOR_ATTN}=sdpa ++{ACTOR_RMPAD}=false" in problem
    sdpa_rmpad = compose_config("grpo", [f"++{ACTOR_ATTN}=sdpa"])
    (problem,) = env.attention_problems(sdpa_rmpad)
    assert problem.startswith(f"{ACTOR_RMPAD}=true needs flash_attention_2")
    env.apply_attention_implementation(cfg, "sdpa")
    assert env.attention_problems(cfg) == []
    cfg.actor_rollout_ref.actor.ulysses_sequence_parallel_size = 2
    (problem,) = env.attention_problems(cfg)
    assert problem.startswith("actor_rollout_ref.actor.ulysses_sequence_parallel_size>1")
    install(site, "flash_attn")
    explicit = compose_config("grpo", [f"++{ACTOR_ATTN}=flash_attention_2"])
    assert env.attention_problems(explicit) == []  # flash-attn imports and CUDA is there


# ------------------------------------------------------------------------------ together


def test_a_ready_machine_has_no_problems(cfg, site, gpus):
    gpus(1)
    engine_and_queue(site)
    assert env.apply_attention_implementation(cfg) == [f"{ACTOR_ATTN}=sdpa", f"{ACTOR_RMPAD}=false"]
    assert env.check_trainer_environment(cfg) == []


def test_this_cpu_machine_is_told_everything_at_once(cfg):
    problems = env.check_trainer_environment(cfg)
    assert any(p.startswith("trainer.device=cuda but torch") for p in problems)
    if not env.is_installed("vllm"):
        assert any(p.startswith("vllm is not installed") for p in problems)
    assert all("\n" not in p for p in problems)  # one line each, for the launcher to print
