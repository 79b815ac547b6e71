"""``segresearch train``: verl PPO training of the Seg-ReSearch agent from the packaged presets.

The presets in ``segresearch/rl/config`` extend verl's ``ppo_trainer``. Paths that depend on
where the package is installed (the agent-loop YAML, the reward file) are filled in here rather
than written into the YAML, so the same presets work from a checkout, a wheel or a container.
``--dry-run`` is the CPU-side check before spending GPU time: it prints the exact config verl
would receive and imports everything the config names, reporting every failure at once.
``--show-preset`` prints a preset and what its published script set that the published trainer
never read (each preset's ``published_unused`` section, which verl never sees).

Before training starts (dry run and launch alike), every row of the data files is checked to
fit ``data.max_prompt_length`` with its real prompt: the rows are text-only, so verl's own
``filter_overlong_prompts`` cannot see the frames (rl/data.py, "prompt lengths").

Heavy imports (hydra, verl, ray) happen inside the functions, so ``segresearch --help`` and the
other subcommands stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from segresearch.agents.context import Context
from segresearch.compat.verl import agent_loop_registry
from segresearch.rl.data import PromptCounter, prompt_lengths
from segresearch.rl.environment import (
    ROLLOUT_ENGINES,
    apply_attention_implementation,
    check_trainer_environment,
)

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2

CONFIG_DIR = Path(__file__).resolve().parent / "config"
AGENT_LOOP_CONFIG = CONFIG_DIR / "seg_research_agent.yaml"
REWARD_FILE = Path(__file__).resolve().with_name("reward.py")
# grpo and dapo reproduce the published runs as their trainer ran them; dapo-full is real DAPO.
PRESETS = {"grpo": "seg_research_grpo", "dapo": "seg_research_dapo",
           "dapo-full": "seg_research_dapo_full"}
# A preset's list of published settings that had no effect; removed before verl sees the config.
UNUSED_KEY = "published_unused"

# Rollout engines by verl's ``rollout.name``; they are installed only where the GPUs are.
ROLLOUT_ENGINE_MODULES = {name: need.module for name, need in ROLLOUT_ENGINES.items()}
# Modules whose absence on this machine is expected (CPU checkout) and only matters on the
# training machine: a dry run warns about them instead of failing.
RUNTIME_ONLY_MODULES = frozenset({*ROLLOUT_ENGINE_MODULES.values(), "transfer_queue"})


class ConfigError(Exception):
    """The presets plus the given overrides do not compose into a config."""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Shared by ``python -m segresearch.rl.train`` and the ``segresearch train`` subcommand,
    so both accept exactly the same command line."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="grpo",
                        help="grpo (default; the published GRPO run), dapo (the published DAPO "
                             "run as it trained: GRPO with clip-higher 0.3) or dapo-full (real "
                             "DAPO: dapo plus group filtering and overlong masking)")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="print the resolved config and check that everything it names "
                             "imports, then exit without training")
    parser.add_argument("--show-preset", dest="show_preset", action="store_true",
                        help="print the resolved preset and the published settings it leaves "
                             "out because the published trainer never read them, then exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="verl/Hydra overrides, handed to Hydra as given, e.g. "
                             "trainer.n_gpus_per_node=4 data.train_files=/data/train.parquet")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="segresearch train",
        description="Train the Seg-ReSearch agent with verl (GRPO or DAPO)."))


# --------------------------------------------------------------------------------------------
# composing


def _hydra_message(exc: BaseException) -> str:
    """Hydra wraps the useful OmegaConf error (which key, why) in its cause chain."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur).strip()
        if text and not any(text in p for p in parts):
            parts.append(text)
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def _absolute(path: str) -> str:
    """Ray workers do not share the launcher's working directory on other nodes, so a
    relative local path is pinned to where the user ran the command."""
    if not path or "://" in path or path.startswith(("hdfs:", "s3:", "gs:")):
        return path
    return str(Path(path).expanduser().resolve())


def apply_runtime_paths(cfg: Any) -> Any:
    """Fill the install-dependent paths the presets leave null; a value given as an override
    wins. Relative local paths (data, rollout records) become absolute (see ``_absolute``)."""
    agent = cfg.actor_rollout_ref.rollout.agent
    agent.agent_loop_config_path = _absolute(agent.agent_loop_config_path or str(AGENT_LOOP_CONFIG))
    reward_fn = cfg.reward.custom_reward_function
    reward_fn.path = _absolute(reward_fn.path or str(REWARD_FILE))
    if cfg.trainer.get("rollout_data_dir"):
        cfg.trainer.rollout_data_dir = _absolute(str(cfg.trainer.rollout_data_dir))
    for key in ("train_files", "val_files"):
        files = cfg.data.get(key)
        if isinstance(files, str):
            cfg.data[key] = _absolute(files)
        elif files is not None:
            cfg.data[key] = [_absolute(str(f)) for f in files]
    return cfg


def compose_config(preset: str = "grpo", overrides: Sequence[str] = ()) -> Any:
    """The preset extended with ``overrides`` (Hydra syntax) and the runtime paths; raises
    ``ConfigError`` with Hydra's explanation when an override is malformed or names a key
    verl's config does not have."""
    from hydra import compose, initialize_config_dir  # heavy, optional: the [rl] extra (verl's)
    from hydra.core.global_hydra import GlobalHydra  # heavy, optional: as above
    from hydra.errors import HydraException  # heavy, optional: as above
    from hydra.initialize import get_gh_backup, restore_gh_from_backup  # heavy, optional: as above
    from omegaconf.errors import OmegaConfBaseException  # heavy, optional: as above

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    # Another library may hold Hydra's global state in this process (importing sam2 does):
    # set it aside while composing, and give it back afterwards.
    saved = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None,
                                   job_name="segresearch_train"):
            cfg = compose(config_name=PRESETS[preset], overrides=list(overrides))
        return apply_runtime_paths(_without_notes(cfg))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_hydra_message(e)) from e
    finally:
        restore_gh_from_backup(saved)


def _without_notes(cfg: Any) -> Any:
    """``cfg`` without the preset's ``published_unused`` notes, which are not verl settings."""
    from omegaconf import open_dict  # heavy, optional: the [rl] extra (verl's)

    with open_dict(cfg):
        cfg.pop(UNUSED_KEY, None)
    return cfg


def published_unused(preset: str) -> list[dict[str, Any]]:
    """What the preset's published script sets that its trainer never read: entries
    ``{key, script, why}`` from the preset file's ``published_unused`` section."""
    doc = yaml.safe_load((CONFIG_DIR / f"{PRESETS[preset]}.yaml").read_text(encoding="utf-8"))
    return list(doc.get(UNUSED_KEY) or [])


def show_preset(preset: str, cfg: Any, out=None) -> int:
    """The resolved preset as YAML, then its ``published_unused`` section."""
    from omegaconf import OmegaConf  # heavy, optional: the [rl] extra (verl's)

    out = out or sys.stdout
    out.write(OmegaConf.to_yaml(cfg, resolve=True))
    out.write(f"# {PRESETS[preset]}.yaml: set by the published script, never read by its trainer\n")
    out.write(yaml.safe_dump({UNUSED_KEY: published_unused(preset)}, sort_keys=False,
                             allow_unicode=True, width=100))
    out.flush()
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# checking


def locate(dotted: str) -> Any:
    """Import ``package.module.Attr``. Unlike a plain ``import_module`` walk, a missing module
    is reported by its own name (``No module named 'segresearch.rl.agent_loop'``) rather than
    as a missing attribute of its parent package."""
    parts = dotted.split(".")
    missing: ModuleNotFoundError | None = None
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only step back when the path itself is not a module; a module that exists but
            # fails to import one of *its* dependencies is the error to report.
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                if e.name != dotted:  # a package on the way is missing, not the last name
                    missing = missing or e
                continue
            raise
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            if missing is not None:
                raise missing from None
            raise
        return obj
    raise missing or ModuleNotFoundError(f"No module named {dotted!r}", name=dotted)


def _runtime_only(exc: BaseException) -> str | None:
    """The missing module's top-level name when it is one the GPU machine provides."""
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, ModuleNotFoundError) and cur.name:
            root = cur.name.split(".")[0]
            return root if root in RUNTIME_ONLY_MODULES else None
        cur = cur.__cause__ or cur.__context__
    return None


class Report:
    """Collects every problem so a dry run shows all of them in one go."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.checked: list[str] = []

    def import_failed(self, what: str, exc: BaseException) -> None:
        root = _runtime_only(exc)
        if root is not None:
            self.warnings.append(f"{what}: {root} is not installed here; the training machine "
                                 f"needs it ({type(exc).__name__}: {exc})")
        else:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")

    def try_import(self, dotted: str, what: str) -> Any:
        try:
            obj = locate(dotted)
        except Exception as e:
            self.import_failed(f"cannot import {dotted} ({what})", e)
            return None
        self.checked.append(dotted)
        return obj


def iter_targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``_target_`` string in a config tree, with the key path that holds it."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{path}.{k}" if path else str(k)
            if k == "_target_" and isinstance(v, str):
                yield path or "<root>", v
            else:
                yield from iter_targets(v, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from iter_targets(v, f"{path}[{i}]")


def _check_agent_loops(cfg: Any, report: Report) -> None:
    from omegaconf import DictConfig, ListConfig, OmegaConf  # heavy: optional [rl] extra

    rollout = cfg.actor_rollout_ref.rollout
    path = Path(str(rollout.agent.agent_loop_config_path))
    default_name = rollout.agent.default_agent_loop
    names: set[str] = set()
    if not path.is_file():
        report.errors.append(f"agent-loop config not found: {path}")
    else:
        try:
            entries = OmegaConf.load(path)
        except Exception as e:
            entries = None
            report.errors.append(f"agent-loop config {path} does not parse: {e}")
        if entries is not None and not isinstance(entries, ListConfig):
            report.errors.append(f"agent-loop config {path} must be a YAML list of "
                                 f"{{name, _target_, ...}} entries, got a mapping")
        for i, entry in enumerate(entries if isinstance(entries, ListConfig) else []):
            where = f"{path} entry {i}"
            if not isinstance(entry, DictConfig) or "name" not in entry or "_target_" not in entry:
                report.errors.append(f"{where}: needs both 'name' and '_target_'")
                continue
            try:
                settings = OmegaConf.to_container(entry, resolve=True)
            except Exception as e:
                report.errors.append(f"{where}: cannot resolve its settings: {e}")
                continue
            names.add(str(entry.name))
            report.try_import(str(entry["_target_"]), f"agent loop {entry.name!r} in {path}")
            budget = settings.get("max_observation_tokens")
            verl_budget = rollout.multi_turn.max_tool_response_length
            if entry.name == default_name and budget is not None and budget != verl_budget:
                report.warnings.append(
                    f"agent loop {entry.name!r} caps observations at {budget} tokens but "
                    f"actor_rollout_ref.rollout.multi_turn.max_tool_response_length is "
                    f"{verl_budget}; edit a copy of {path.name} to match")
    if default_name not in names:
        # Built-in loops and ones registered by external_lib live in verl's registry.
        try:
            registry = agent_loop_registry()
        except Exception as e:
            report.import_failed("cannot read verl's agent-loop registry", e)
            return
        if default_name not in registry:
            report.errors.append(
                f"actor_rollout_ref.rollout.agent.default_agent_loop={default_name!r} is neither "
                f"in {path} ({sorted(names)}) nor registered with verl "
                f"({sorted(registry)})")


def _check_reward(cfg: Any, report: Report) -> None:
    reward_fn = cfg.reward.custom_reward_function
    what = f"reward function {reward_fn.name!r} from {reward_fn.path}"
    try:
        # The loader verl's reward workers use, so path forms (file, pkg://) behave the same.
        from verl.utils.import_utils import load_extern_object  # heavy, optional: verl

        fn = load_extern_object(module_path=str(reward_fn.path), object_name=str(reward_fn.name))
    except Exception as e:
        report.import_failed(f"cannot load {what}", e)
        return
    if not callable(fn):
        report.errors.append(f"{what} is not callable ({type(fn).__name__})")
    else:
        report.checked.append(f"{reward_fn.path}:{reward_fn.name}")


def _check_runtime_modules(cfg: Any, report: Report) -> None:
    engine = str(cfg.actor_rollout_ref.rollout.name)
    module = ROLLOUT_ENGINE_MODULES.get(engine)
    if module is None:
        report.errors.append(f"actor_rollout_ref.rollout.name={engine!r}: expected one of "
                             f"{sorted(ROLLOUT_ENGINE_MODULES)}")
    elif importlib.util.find_spec(module) is None:
        report.warnings.append(f"rollout engine {engine} is not installed here; the training "
                               f"machine needs it (pip install 'segresearch[gpu]')")
    if cfg.trainer.use_v1 and importlib.util.find_spec("transfer_queue") is None:
        report.warnings.append("transfer_queue (PyPI TransferQueue, in verl[verl-core]) is not "
                               "installed here; verl's V1 trainer (trainer.use_v1=true) imports "
                               "it at launch")


def _local_data_files(cfg: Any) -> list[Path]:
    """The data files that exist on this machine as local parquet files."""
    found = []
    for key in ("train_files", "val_files"):
        files = cfg.data.get(key)
        for f in [files] if isinstance(files, str) else list(files or []):
            path = Path(str(f))
            if "://" not in str(f) and path.suffix == ".parquet" and path.is_file():
                found.append(path)
    return list(dict.fromkeys(found))


def _prompt_settings(cfg: Any) -> dict[str, Any]:
    """What besides a row decides its prompt, as the rollout worker will see it: the system
    prompt variant (the default agent loop's ``search``, ``protocol`` and ``keyframe_size``,
    and the SEGRESEARCH_ environment the graph's Context reads) and verl's chat-template and
    processor kwargs."""
    from omegaconf import OmegaConf  # heavy, optional: the [rl] extra (verl's)

    rollout = cfg.actor_rollout_ref.rollout
    search = "local"
    settings: dict[str, Any] = {}  # the entry's settings that shape the prompt, beyond search
    path = Path(str(rollout.agent.agent_loop_config_path))
    if path.is_file():
        for entry in OmegaConf.to_container(OmegaConf.load(path), resolve=True) or []:
            if isinstance(entry, dict) and entry.get("name") == rollout.agent.default_agent_loop:
                search = str(entry.get("search", search))
                settings = {k: entry[k] for k in ("protocol", "keyframe_size", "ask_user", "ask_user_reply")
                            if k in entry}
    ctx = Context(search=search, **settings)

    def plain(key: str) -> dict[str, Any]:
        value = cfg.data.get(key)
        return dict(OmegaConf.to_container(value, resolve=True)) if OmegaConf.is_config(value) else dict(value or {})

    return {"use_search": ctx.use_search, "system_prompt_file": ctx.system_prompt_file,
            "protocol": ctx.protocol, "keyframe_size": ctx.keyframe_size,
            "ask_user": ctx.ask_user and ctx.protocol == "tools",
            "chat_template_kwargs": plain("apply_chat_template_kwargs"),
            "mm_processor_kwargs": plain("mm_processor_kwargs")}


def _prompt_limit(cfg: Any) -> tuple[int, str]:
    """The prompt length the rollout enforces (verl's agent loop refuses a longer multimodal
    prompt) and the key to raise: rollout.prompt_length follows data.max_prompt_length unless
    it was overridden on its own."""
    data, rollout = int(cfg.data.max_prompt_length), int(cfg.actor_rollout_ref.rollout.prompt_length)
    if rollout < data:
        return rollout, "actor_rollout_ref.rollout.prompt_length"
    return data, "data.max_prompt_length"


def _overrun_message(result: Any, key: str) -> str:
    rows = ", ".join(f"row {o.row}" + (f" (id {o.id})" if o.id else "") + f": {o.tokens}"
                     for o in result.over[:5])
    more = ", …" if len(result.over) > 5 else ""
    return (f"{len(result.over)} of {result.rows} rows of {result.path} need more than "
            f"{key}={result.limit} prompt tokens ({rows}{more}); each would "
            f"fail in the rollout as a masked zero-reward sample every time it is drawn. Raise "
            f"{key} to {result.longest} (and "
            f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu with it), or show fewer or "
            f"smaller frames (`segresearch data okvos --num-frames/--frame-size`). The "
            f"published data carried its frames, so its filter_overlong_prompts dropped such rows")


def check_prompt_lengths(cfg: Any, report: Report) -> None:
    """Every row of the local data files must fit ``data.max_prompt_length`` with its real
    prompt (system prompt, frames, question), counted with the model's tokenizer and image
    geometry (``segresearch.rl.data.PromptCounter``). The rows are text-only, so verl's
    ``filter_overlong_prompts`` counts the question alone; a row it lets through but the
    rollout cannot fit would be a masked zero-reward sample on every draw. Rows that do not
    fit are errors, so training does not start with them."""
    files = _local_data_files(cfg)
    if not files:
        return
    model = str(cfg.actor_rollout_ref.model.path)
    try:
        counter = PromptCounter.from_pretrained(
            model, trust_remote_code=bool(cfg.actor_rollout_ref.model.get("trust_remote_code")),
            **_prompt_settings(cfg))
    except Exception as e:  # noqa: BLE001 - no model here (CPU checkout): say what was not checked
        report.warnings.append(f"prompt lengths not checked: cannot count prompt tokens with the "
                               f"tokenizer and processor of {model} ({type(e).__name__}: {e})")
        return
    limit, key = _prompt_limit(cfg)
    for path in files:
        try:
            result = prompt_lengths(path, counter, limit)
        except ValueError as e:
            report.warnings.append(f"prompt lengths not checked: {e}")
            continue
        report.checked.append(f"prompt lengths of {path} (longest {result.longest} tokens)")
        if result.over:
            report.errors.append(_overrun_message(result, key))


def recipe_errors(cfg: Any) -> list[str]:
    """Settings verl accepts but silently ignores, which would train something other than
    what the preset says."""
    errors = []
    if cfg.algorithm.filter_groups.enable and not cfg.trainer.use_v1:
        errors.append("algorithm.filter_groups.enable=true (DAPO) works only in verl's V1 "
                      "trainer; the legacy trainer (trainer.use_v1=false) would ignore it")
    return errors


def _check_with_verl(cfg: Any, report: Report) -> None:
    """verl's own launch-time validation (batch divisibility, micro-batch settings, ...)."""
    try:
        from verl.trainer.ppo.utils import need_critic, need_reference_policy  # heavy: verl
        from verl.utils.config import validate_config  # heavy, optional: verl
    except Exception as e:
        report.import_failed("cannot import verl's config validation", e)
        return
    try:
        trial = copy.deepcopy(cfg)
        with warnings.catch_warnings():
            # "Disabled critic as adv_estimator != gae" is the intended GRPO setup, not news.
            warnings.simplefilter("ignore", UserWarning)
            use_critic = need_critic(trial)
        validate_config(config=trial, use_reference_policy=need_reference_policy(trial),
                        use_critic=use_critic)
    except Exception as e:
        report.errors.append(f"verl rejects the config: {type(e).__name__}: {e}")


def check_config(cfg: Any) -> Report:
    """Everything a dry run verifies: each class or function the config names imports, the
    agent loop it selects exists, verl validates it, and the data files are where it says."""
    from omegaconf import OmegaConf  # heavy, optional: the [rl] extra (verl's)

    report = Report()
    report.errors.extend(recipe_errors(cfg))
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        report.errors.append(f"config does not resolve: {e}")
        tree = OmegaConf.to_container(cfg, resolve=False)
    libs = cfg.actor_rollout_ref.model.get("external_lib")
    for lib in ([libs] if isinstance(libs, str) else list(libs or [])):
        try:  # modules, imported the way verl's import_external_libs does
            importlib.import_module(str(lib))
            report.checked.append(str(lib))
        except Exception as e:
            report.import_failed(f"cannot import {lib} (actor_rollout_ref.model.external_lib)", e)
    _check_agent_loops(cfg, report)
    _check_reward(cfg, report)
    seen: set[str] = set()
    for where, target in iter_targets(tree):
        if target not in seen:
            seen.add(target)
            report.try_import(target, f"_target_ of {where}")
    _check_runtime_modules(cfg, report)
    _check_with_verl(cfg, report)
    check_prompt_lengths(cfg, report)
    for key in ("train_files", "val_files"):
        files = cfg.data.get(key)
        for f in [files] if isinstance(files, str) else list(files or []):
            if "://" not in str(f) and not Path(str(f)).exists():
                report.warnings.append(f"data.{key}: {f} does not exist (yet)")
    return report


def dry_run(cfg: Any, out=None, err=None) -> int:
    from omegaconf import OmegaConf  # heavy, optional: the [rl] extra (verl's)

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception as e:
        print(f"warning: printing the config unresolved: {e}", file=err)
        text = OmegaConf.to_yaml(cfg)
    out.write(text)
    out.flush()
    # verl's validation prints progress to stdout; keep stdout the config alone, so it can be
    # saved or piped as YAML.
    with contextlib.redirect_stdout(err):
        report = check_config(cfg)
    for w in report.warnings:
        print(f"warning: {w}", file=err)
    for e in report.errors:
        print(f"error: {e}", file=err)
    if report.errors:
        print(f"dry run: {len(report.errors)} problem(s); training would not start", file=err)
        return EXIT_CHECK_FAILED
    print(f"dry run: ok ({len(report.checked)} imports checked, "
          f"{len(report.warnings)} warning(s))", file=err)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# launching


def launch(cfg: Any) -> None:
    """Hand the composed config to verl. ``verl.trainer.main_ppo.main`` is a ``@hydra.main``
    function; its undecorated body (``__wrapped__``) takes a config and does what verl's own
    CLI does after composing: device selection, ``validate_config``, then ``run_ppo`` with the
    V1 or legacy task runner per ``trainer.use_v1``. Calling it keeps that dispatch verl's."""
    from verl.trainer import main_ppo  # heavy, optional: verl (torch, ray)

    entry = getattr(main_ppo.main, "__wrapped__", main_ppo.main)
    entry(cfg)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = compose_config(args.preset, args.overrides)
    except ConfigError as e:
        print(f"error: invalid training config ({PRESETS.get(args.preset, args.preset)} with "
              f"overrides {list(args.overrides)}):\n{e}", file=sys.stderr)
        return EXIT_USAGE
    if args.show_preset:
        return show_preset(args.preset, cfg)
    if args.dry_run:
        return dry_run(cfg)
    report = Report()
    report.errors.extend(recipe_errors(cfg))
    check_prompt_lengths(cfg, report)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if report.errors:
        for e in report.errors:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    # The machine itself, before verl starts Ray and the rollout servers: every import the
    # trainer needs, the pinned pairings, CUDA, and an attention kernel that exists here.
    for line in apply_attention_implementation(cfg):
        print(f"note: {line}", file=sys.stderr)
    problems = check_trainer_environment(cfg)
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return EXIT_USAGE
    launch(cfg)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    # Intermixed, so options may follow overrides: `train a=1 --dry-run b=2`.
    args = build_parser().parse_intermixed_args(None if argv is None else list(argv))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
