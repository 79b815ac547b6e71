"""Is this machine able to run ``segresearch train``? Checked before verl starts.

verl fails late and far from the cause on a machine that is not set up for it: a missing
rollout engine or TransferQueue surfaces inside a Ray actor minutes after launch, a vLLM built
for another torch release dies on an undefined symbol, and verl's default attention
(``flash_attention_2``, taken when ``override_config`` names none) needs flash-attn, which
PyPI ships only as a source build. :func:`check_trainer_environment` finds all of these up
front and names the package or the override that fixes each; :func:`attention_implementation`
picks flash-attn where it works and PyTorch's ``sdpa`` elsewhere.

Everything here reads the composed Hydra config (``segresearch.rl.train.compose_config``) and
imports nothing heavy at module level, so ``segresearch --help`` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

FLASH_ATTENTION = "flash_attention_2"
SDPA = "sdpa"
# What verl 0.9.1 uses when override_config has no attn_implementation
# (verl/workers/config/model.py, HFModelConfig.__post_init__).
VERL_DEFAULT_ATTENTION = FLASH_ATTENTION

# The HFModelConfig sections verl builds models from: the actor, the reference policy and the
# rollout share actor_rollout_ref.model (the reference gets a deep copy); the critic has its own.
ACTOR_MODEL = "actor_rollout_ref.model"
CRITIC_MODEL = "critic.model"
ATTENTION_KEY = "override_config.attn_implementation"
REMOVE_PADDING_KEY = "use_remove_padding"
# Sequence parallelism (Ulysses) needs remove-padding, so it also needs flash-attn.
SEQUENCE_PARALLEL_KEYS = {
    ACTOR_MODEL: ("actor_rollout_ref.actor.ulysses_sequence_parallel_size",
                  "actor_rollout_ref.ref.ulysses_sequence_parallel_size"),
    CRITIC_MODEL: ("critic.ulysses_sequence_parallel_size",),
}

# Distributions whose builds are tied to one torch release (compiled extensions) or whose
# requirements pin torch / transformers; the versions installed must satisfy those pins.
PAIRED_DISTRIBUTIONS = ("torch", "torchvision", "torchaudio", "transformers")


RL_EXTRA = "pip install 'segresearch[hf,rl]'"
GPU_EXTRA = "pip install 'segresearch[hf,rl,gpu]'"


@dataclass(frozen=True)
class Need:
    """A module the trainer imports, the distribution that provides it, why it is needed and
    the install line that brings it."""

    module: str
    distribution: str
    why: str
    install: str


TRAINER_NEEDS = (
    Need("verl", "verl", "the trainer itself", RL_EXTRA),
    Need("ray", "ray", "verl's workers are Ray actors", RL_EXTRA),
    Need("torch", "torch", "the FSDP actor", GPU_EXTRA),
    Need("transformers", "transformers", "the model classes", RL_EXTRA),
)
# Keyed by actor_rollout_ref.rollout.name.
ROLLOUT_ENGINES = {
    "vllm": Need("vllm", "vllm", "actor_rollout_ref.rollout.name=vllm", GPU_EXTRA),
    "sglang": Need("sglang", "sglang", "actor_rollout_ref.rollout.name=sglang",
                   "pip install 'verl[sglang]==0.9.1'"),
    "trtllm": Need("tensorrt_llm", "tensorrt-llm", "actor_rollout_ref.rollout.name=trtllm",
                   "pip install tensorrt-llm"),
}
TRANSFER_QUEUE = Need("transfer_queue", "TransferQueue",
                      "verl's V1 trainer (trainer.use_v1=true) imports it at launch", GPU_EXTRA)


# ------------------------------------------------------------------------------ config


def select(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg``'s value at a dotted key, or ``default`` where any part is missing. Works on an
    OmegaConf DictConfig (struct mode included) and on plain dicts, without importing
    OmegaConf, so tests can hand in either."""
    node = cfg
    for part in dotted.split("."):
        getter = getattr(node, "get", None)
        if getter is None:
            return default
        node = getter(part, None)
        if node is None:
            return default
    return node


def configured_attention(cfg: Any, section: str = ACTOR_MODEL) -> str:
    """The attention implementation verl will load ``section``'s model with."""
    return str(select(cfg, f"{section}.{ATTENTION_KEY}", VERL_DEFAULT_ATTENTION))


def uses_critic(cfg: Any) -> bool:
    """Whether verl builds a critic for this config (its own rule, ``need_critic``)."""
    try:
        from verl.trainer.ppo.utils import need_critic  # heavy, optional: verl
    except ImportError:
        return False  # verl itself is missing, which is reported on its own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Disabled critic as ..." is expected
        return bool(need_critic(cfg))


def model_sections(cfg: Any) -> list[str]:
    """The model sections verl will load with transformers for this config."""
    return [ACTOR_MODEL, CRITIC_MODEL] if uses_critic(cfg) else [ACTOR_MODEL]


def trainer_needs(cfg: Any) -> list[Need]:
    """Every module the trainer will import for ``cfg``; an unknown engine name is reported by
    :func:`config_problems` instead."""
    needs = list(TRAINER_NEEDS)
    engine = ROLLOUT_ENGINES.get(str(select(cfg, "actor_rollout_ref.rollout.name", "vllm")))
    if engine is not None:
        needs.append(engine)
    if select(cfg, "trainer.use_v1", True) or select(cfg, "transfer_queue.enable", False):
        needs.append(TRANSFER_QUEUE)
    return needs


def config_problems(cfg: Any) -> list[str]:
    name = str(select(cfg, "actor_rollout_ref.rollout.name", "vllm"))
    if name not in ROLLOUT_ENGINES:
        return [f"actor_rollout_ref.rollout.name={name!r}: expected one of {sorted(ROLLOUT_ENGINES)}"]
    return []


# ------------------------------------------------------------------------------ modules


def is_installed(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (importing vLLM takes seconds
    and may initialise CUDA)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a spec-less stand-in
        return False


def missing_modules(needs: Iterable[Need]) -> list[str]:
    return [f"{n.module} is not installed ({n.why}): {n.install}"
            for n in needs if not is_installed(n.module)]


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pin_problems(distribution: str) -> list[str]:
    """Where ``distribution``'s own requirements on torch, torchvision, torchaudio or
    transformers are not met by what is installed. vLLM, SGLang, torchvision and torchaudio
    compile against one torch release, and verl pins transformers: a mismatch installed with
    ``--no-deps`` or by a later upgrade imports fine and breaks at the first kernel call."""
    own = installed_version(distribution)
    if own is None:
        return []
    problems = []
    for line in importlib.metadata.requires(distribution) or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) not in PAIRED_DISTRIBUTIONS or not req.specifier:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra's requirement, or another platform's
        have = installed_version(req.name)
        if have is not None and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{distribution} {own} requires {req.name}{req.specifier} but "
                            f"{req.name} {have} is installed ({GPU_EXTRA} installs the pairing "
                            f"verl 0.9.1 tested)")
    return problems


def version_problems(needs: Iterable[Need]) -> list[str]:
    """Pin mismatches of the needed distributions and of torch's companions."""
    names = [n.distribution for n in needs if n.distribution not in ("torch", "transformers")]
    names += ["torchvision", "torchaudio"]
    return [p for name in dict.fromkeys(names) for p in pin_problems(name)]


# ------------------------------------------------------------------------------ devices


def cuda_problems(cfg: Any) -> list[str]:
    """trainer.device=cuda needs a CUDA build of torch that sees the GPUs the config asks
    for (on a one-node run, all of them must be on this machine)."""
    if str(select(cfg, "trainer.device", "cuda")) != "cuda" or not is_installed("torch"):
        return []
    import torch  # heavy: torch, optional ([hf]/[gpu] extras)

    if not torch.cuda.is_available():
        build = torch.version.cuda
        why = (f"a CPU-only build ({GPU_EXTRA} pins the CUDA build verl tested)" if build is None
               else f"built for CUDA {build}, but no GPU or driver is visible")
        return [f"trainer.device=cuda but torch {torch.__version__} is {why}"]
    wanted = int(select(cfg, "trainer.n_gpus_per_node", 1) or 0)
    have = torch.cuda.device_count()
    if int(select(cfg, "trainer.nnodes", 1) or 1) == 1 and have < wanted:
        return [f"trainer.n_gpus_per_node={wanted} but this machine has {have} GPU(s)"]
    return []


# ------------------------------------------------------------------------------ attention


def flash_attn_problem() -> str | None:
    """Why flash-attn cannot serve as ``flash_attention_2`` here, or None when it can. The
    import is real: a flash-attn wheel built for another torch finds its spec but fails to
    load its extension."""
    if not is_installed("flash_attn"):
        return "flash_attn is not installed (flash-attn is built from source: pip install flash-attn --no-build-isolation)"
    import torch  # heavy: torch, optional ([hf]/[gpu] extras)

    if not torch.cuda.is_available():
        return "flash_attn needs CUDA, which torch does not see here"
    try:
        importlib.import_module("flash_attn")
    except Exception as e:  # noqa: BLE001 - undefined symbols arrive as ImportError or OSError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"flash_attn does not import: {type(e).__name__}: {first}"
    return None


def attention_implementation() -> str:
    """``flash_attention_2`` where flash-attn imports with CUDA, else ``sdpa`` (PyTorch's
    fused attention, in every torch build)."""
    return FLASH_ATTENTION if flash_attn_problem() is None else SDPA


def attention_settings(impl: str, section: str = ACTOR_MODEL) -> dict[str, Any]:
    """The config values that make ``section``'s model use ``impl``. Other implementations
    also need remove-padding off: verl packs a batch into one row for flash-attn's varlen
    kernel there (its Qwen2-VL attention calls ``flash_attn_varlen_func`` directly)."""
    settings: dict[str, Any] = {f"{section}.{ATTENTION_KEY}": impl}
    if impl != FLASH_ATTENTION:
        settings[f"{section}.{REMOVE_PADDING_KEY}"] = False
    return settings


def attention_overrides(impl: str | None = None, sections: Iterable[str] = (ACTOR_MODEL,)) -> list[str]:
    """Hydra overrides for the command line (``segresearch train ... <these>``). ``++``
    because verl's ``override_config`` is an empty struct mapping: a plain ``key=value`` is
    refused there, and ``+key`` is refused where the key exists already."""
    impl = impl or attention_implementation()
    return [f"++{key}={hydra_value(value)}"
            for section in sections for key, value in attention_settings(impl, section).items()]


def hydra_value(value: Any) -> str:
    """A value as Hydra's command line spells it (``false``, not ``False``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def apply_attention_implementation(cfg: Any, impl: str | None = None) -> list[str]:
    """Set the attention of every model section the user left at verl's default, in the
    composed ``cfg``; returns the ``key=value`` settings made (empty when the user chose).
    An explicit choice is left alone, and :func:`check_trainer_environment` judges it."""
    from omegaconf import OmegaConf  # heavy: optional [rl] extra (verl's)

    made: list[str] = []
    for section in model_sections(cfg):
        if select(cfg, f"{section}.{ATTENTION_KEY}") is not None:
            continue
        impl = impl or attention_implementation()
        for key, value in attention_settings(impl, section).items():
            # force_add: override_config is an empty mapping in struct mode
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
            made.append(f"{key}={hydra_value(value)}")
    return made


def attention_problems(cfg: Any) -> list[str]:
    """Each model section's attention choice against what this machine and verl allow."""
    if str(select(cfg, "trainer.device", "cuda")) != "cuda":
        return []
    problems: list[str] = []
    flash_problem: str | None = None
    for section in model_sections(cfg):
        impl = configured_attention(cfg, section)
        key = f"{section}.{ATTENTION_KEY}"
        if impl == FLASH_ATTENTION:
            flash_problem = flash_problem or flash_attn_problem()
            if flash_problem is not None:
                chosen = "" if select(cfg, key) else " (verl's default)"
                problems.append(f"{key}={impl}{chosen} but {flash_problem}; or use PyTorch "
                                f"attention: {' '.join(attention_overrides(SDPA, [section]))}")
            continue
        if select(cfg, f"{section}.{REMOVE_PADDING_KEY}", False):
            problems.append(f"{section}.{REMOVE_PADDING_KEY}=true needs {FLASH_ATTENTION} "
                            f"(verl packs sequences for flash-attn's varlen kernel) but {key}={impl}: "
                            f"set ++{section}.{REMOVE_PADDING_KEY}=false")
        for sp_key in SEQUENCE_PARALLEL_KEYS[section]:
            if int(select(cfg, sp_key, 1) or 1) > 1:
                problems.append(f"{sp_key}>1 (Ulysses) needs remove-padding and so "
                                f"{FLASH_ATTENTION}, but {key}={impl}")
    return problems


# ------------------------------------------------------------------------------ together


def check_trainer_environment(cfg: Any) -> list[str]:
    """One line per reason ``segresearch train`` cannot run ``cfg`` on this machine: missing
    modules (verl, ray, torch, transformers, the rollout engine named by
    ``actor_rollout_ref.rollout.name``, TransferQueue when ``trainer.use_v1`` or
    ``transfer_queue.enable``), torch/vLLM/transformers pins that do not match, CUDA that
    ``trainer.device``/``trainer.n_gpus_per_node`` ask for and torch does not see, and an
    attention setting flash-attn or verl cannot serve. Empty when nothing is in the way."""
    problems = config_problems(cfg)
    needs = trainer_needs(cfg)
    problems += missing_modules(needs)
    problems += version_problems(needs)
    problems += cuda_problems(cfg)
    if is_installed("torch"):
        problems += attention_problems(cfg)
    return problems
