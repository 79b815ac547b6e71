"""``bench/gpu_check.py`` run here on the CPU, so its code path is tested without a GPU.

The lent GPU machines have torch and transformers but no LangGraph, LangChain, verl, Ray or
vLLM; the fast test hides those packages from the check's process (an import hook that
refuses them, as a machine without them would) to show the check still runs there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sam2")

# transformers turns token lists into numpy arrays in a way numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
ABSENT_ON_THE_GPU_MACHINE = ("langgraph", "langchain_core", "langchain_openai", "pydantic",
                             "verl", "ray", "vllm")

# Refuses the named top-level packages, then runs the check as `python gpu_check.py ...`.
WITHOUT = """
import runpy, sys
from importlib.abc import MetaPathFinder
ABSENT = set(sys.argv[1].split(","))
class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Absent())
script = sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def run(*args: str, absent: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    if absent:
        cmd = [sys.executable, "-c", WITHOUT, ",".join(absent), str(SCRIPT), *args]
    else:
        cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def rows(stdout: str) -> dict[str, tuple[str, str, str]]:
    """check → (device, result, detail) from the printed table."""
    out = {}
    for line in stdout.splitlines()[2:]:
        if line.startswith("| "):
            check, device, result, detail = (c.strip() for c in line.strip("|").split(" | ", 3))
            out[check] = (device, result, detail)
    return out


def test_runs_without_the_packages_the_gpu_machine_lacks(tmp_path):
    """Prefetch and imports only (seconds); the backend row says why it is skipped."""
    proc = run("--device", "cpu", "--quick", "--only", "prefetch,imports,hf backend",
               "--json", str(tmp_path / "rows.json"), absent=ABSENT_ON_THE_GPU_MACHINE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = rows(proc.stdout)
    assert table["cuda comparisons"][1] == "skipped"
    assert "every check compared CPU against CPU" in table["cuda comparisons"][2]
    assert table["prefetch: frame store vs sam2 loader"][1] == "ok"
    assert "served by the prefetch threads" in table["prefetch: frame store vs sam2 loader"][2]
    assert table["imports: torch-only"][1] == "ok"
    assert table["hf backend (HFChatModel)"][1:] == (
        "skipped", "optional: langchain_core is not installed (pip install 'langchain-core>=1.8,<2')")
    assert proc.stdout.rstrip().endswith("gpu_check: passed (3 ok, 2 skipped)")
    assert '"result": "ok"' in (tmp_path / "rows.json").read_text()


def test_unknown_check_is_a_usage_error():
    proc = run("--device", "cpu", "--only", "sam3")
    assert proc.returncode == 2 and "unknown check(s) ['sam3']" in proc.stderr


@pytest.mark.slow
def test_quick_cpu_run_compares_every_part():
    """The whole check, CPU against CPU (40-90 s on two cores)."""
    proc = run("--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = rows(proc.stdout)
    assert [c for c, (_, result, _) in table.items() if result != "ok"] == ["cuda comparisons"]
    sam2 = table["sam2: ours vs bare predictor"][2]
    assert "bit-equal logits" in sam2 and "masks equal" in sam2
    for dtype in ("float32", "bfloat16"):
        detail = table[f"transformers qwen3_vl {dtype} vs cpu float32"][2]
        assert detail.startswith("actions 3/3 equal (search,keyframe,answer)")
    assert table["hf backend qwen3_vl bfloat16 vs direct"][2] == "text and actions 3/3 equal"
    assert proc.stdout.rstrip().endswith("gpu_check: passed (7 ok, 1 skipped)")


# ------------------------------------------------------------------------------ in process


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module, for the parts a mismatch goes through."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_broken_numerics_change_the_action(gpu_check, tmp_path):
    """The steering bias leaves the model's logits in play: a NaN in the weights (as a broken
    bf16 path would give) shows as a different action, not as the scripted one."""
    import torch

    settings = gpu_check.Settings(device="cpu", frames=4, image_size=256, families=["qwen3_vl"],
                                  dtypes=["float32"], sam2_checkpoint="", sam2_config="",
                                  work=tmp_path)
    model, processor = gpu_check.load_tiny(gpu_check.tiny_checkpoint(settings, "qwen3_vl"),
                                           "cpu", "float32")
    script = gpu_check.SCRIPTS[1]
    good = gpu_check.run_script(model, processor, script, "cpu")
    assert good.action == gpu_check.expected_action(script)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    bad = gpu_check.run_script(model, processor, script, "cpu")
    assert bad.action != good.action
    ok, detail = gpu_check.compare_outcomes({script.name: bad}, {script.name: good}, "float32")
    assert not ok and detail.startswith("actions 0/1 equal")


def test_exit_codes(gpu_check):
    row = gpu_check.Row
    assert gpu_check.exit_code([row("a", "cpu", "ok", ""), row("b", "cuda", "skipped", "")]) == 0
    assert gpu_check.exit_code([row("a", "cpu", "missing", "")]) == 2
    assert gpu_check.exit_code([row("a", "cpu", "missing", ""), row("b", "cpu", "MISMATCH", "")]) == 1
    assert gpu_check.summary([row("a", "cpu", "ERROR", "")], 1) == "gpu_check: FAILED (1 ERROR)"
