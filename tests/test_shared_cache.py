"""LoadOnce: one load per key however many callers arrive at once; bounded when asked; every
process cache registered by name and every thread pool made in one place."""

from __future__ import annotations

import ast
import asyncio
import base64
import gc
import importlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from segresearch.core import shared_cache
from segresearch.core.envvars import EnvError
from segresearch.core.shared_cache import LoadOnce


def test_concurrent_callers_share_one_load_per_key():
    cache: LoadOnce[tuple[str, int]] = LoadOnce(maxsize=8)
    loads: list[str] = []
    lock = threading.Lock()

    def load(key: str):
        def run():
            with lock:
                loads.append(key)
            time.sleep(0.05)
            return (key, len(loads))
        return run

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda i: cache.get(f"k{i % 3}", load(f"k{i % 3}")), range(12)))
    assert sorted(loads) == ["k0", "k1", "k2"]
    for i, v in enumerate(got):
        assert v[0] == f"k{i % 3}" and v is cache.get(v[0], lambda: pytest.fail("reloaded"))


def test_bounded_cache_evicts_least_recently_used_and_keeps_no_locks():
    cache: LoadOnce[int] = LoadOnce(maxsize=3)
    for k in range(3):
        cache.get(k, lambda k=k: k * 10)
    cache.get(0, lambda: pytest.fail("0 is cached"))  # 0 is now the most recent
    cache.get(3, lambda: 30)  # evicts 1, the least recently used
    assert [cache.has(k) for k in range(4)] == [True, False, True, True]
    assert cache.get(1, lambda: 11) == 11  # loaded again after eviction
    assert cache.stats().locks == 0  # no lock left behind per key


def test_a_failed_load_is_not_cached_and_can_be_retried():
    cache: LoadOnce[int] = LoadOnce(maxsize=2)

    def boom() -> int:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get("x", boom)
    assert not cache.has("x") and cache.get("x", lambda: 5) == 5


def test_async_callers_in_one_loop_share_one_load_and_failures_are_not_kept():
    cache: LoadOnce[list[int]] = LoadOnce(maxsize=4)
    loads: list[str] = []

    async def load(key: str) -> list[int]:
        loads.append(key)
        await asyncio.sleep(0.02)  # the other callers arrive while it runs
        if key == "bad":
            raise RuntimeError("render failed")
        return [len(key)]

    async def main() -> None:
        got = await asyncio.gather(*(cache.aget(k, lambda k=k: load(k)) for k in ["ab", "ab", "c"] * 4))
        assert got == [[2], [2], [1]] * 4 and sorted(loads) == ["ab", "c"]
        results = await asyncio.gather(*(cache.aget("bad", lambda: load("bad")) for _ in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results) and loads.count("bad") == 1
        assert not cache.has("bad") and cache.stats().locks == 0
        assert await cache.aget("ab", lambda: pytest.fail("cached")) == [2]

    asyncio.run(main())
    st = cache.stats()
    assert (st.size, st.misses, st.hits) == (2, 3, 13)  # 10 + 2 waiters, then one cached read


def test_evicted_values_are_released_but_cleared_ones_are_left_to_their_users():
    released: list[str] = []
    cache: LoadOnce[str] = LoadOnce(maxsize=2, on_evict=released.append)
    for k in "abc":
        cache.get(k, lambda k=k: k.upper())
    assert released == ["A"] and cache.stats().evictions == 1
    cache.clear()
    assert released == ["A"] and len(cache) == 0


def test_a_weight_budget_evicts_by_weight_and_keeps_no_value_heavier_than_all_of_it():
    cache: LoadOnce[str] = LoadOnce(max_weight=10, weigh=len)
    cache.put("a", "xxxx")
    cache.put("b", "yyyy")
    cache.put("a", "ignored")  # already held: kept as it was
    assert cache.peek("a") == "xxxx"  # and now the most recently used
    cache.put("c", "zzzz")  # 12 > 10: the least recently used goes
    assert cache.peek("b") is None and cache.stats().weight == 8 and cache.stats().evictions == 1
    assert cache.get("big", lambda: "w" * 11) == "w" * 11 and not cache.has("big")
    cache.clear()
    assert cache.stats().weight == 0
    with pytest.raises(ValueError, match="together"):
        LoadOnce(max_weight=10)


def test_the_registry_names_every_cache_and_clears_them_by_name():
    a: LoadOnce[int] = LoadOnce(maxsize=3, name="test.registry_a")
    owners = [LoadOnce(maxsize=5, name="test.per_owner") for _ in range(2)]
    a.get(1, lambda: 1)
    a.get(1, lambda: pytest.fail("cached"))
    for i in range(2):
        owners[i].get(i, lambda i=i: i)
    assert {"test.registry_a", "test.per_owner"} <= set(shared_cache.registered())
    st = shared_cache.stats("test.registry_a")
    assert (st.size, st.maxsize, st.hits, st.misses, st.instances) == (1, 3, 1, 1, 1)
    assert (shared_cache.stats("test.per_owner").size, shared_cache.stats("test.per_owner").instances) == (2, 2)
    shared_cache.clear("test.per_owner")
    assert [len(c) for c in owners] == [0, 0] and len(a) == 1
    shared_cache.clear_all(keep=("test.registry_a",))
    assert len(a) == 1
    shared_cache.clear_all()
    assert len(a) == 0
    del owners  # an owner's cache is held weakly: it goes with its owner
    gc.collect()
    assert shared_cache.stats("test.per_owner").instances == 0
    with pytest.raises(KeyError, match="test.registry_a"):
        shared_cache.clear("test.no_such_cache")


def test_a_batch_caller_claims_its_keys_and_waiters_get_what_it_settles():
    cache: LoadOnce[str] = LoadOnce(0, name="test.flights")  # shares loads, keeps nothing
    a, mine_a = cache.claim("a")
    b, mine_b = cache.claim("b")
    assert mine_a and mine_b and cache.stats().locks == 2
    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(cache.get, k, lambda: pytest.fail("loaded twice")) for k in "aabb"]
        deadline = time.monotonic() + 10
        while cache.stats().hits < 4 and time.monotonic() < deadline:  # all four joined a load
            time.sleep(0.01)
        cache.settle("a", a, "A")
        cache.settle("b", b, error=TimeoutError("backend"))
        assert [w.result() for w in waiting[:2]] == ["A", "A"]
        for w in waiting[2:]:
            with pytest.raises(TimeoutError):
                w.result()
    assert len(cache) == 0 and cache.stats().locks == 0 and cache.claim("a")[1]


def test_keep_newest_holds_the_last_value_however_heavy():
    cache: LoadOnce[str] = LoadOnce(max_weight=4, weigh=len, keep_newest=True)
    cache.put("a", "xx")
    cache.put("big", "w" * 9)  # over the whole budget: kept alone
    assert [cache.has(k) for k in ("a", "big")] == [False, True]
    cache.put("b", "yy")
    assert [cache.has(k) for k in ("big", "b")] == [False, True] and cache.stats().weight == 2
    cache.put("b", "zz", replace=True)
    assert cache.peek("b") == "zz"


# Every process cache of the package, by module and the name it is registered under.
KNOWN_CACHES = {
    "segresearch.agents.content": ["content.decoded_images"],
    "segresearch.core.media_store": ["media.store"],
    "segresearch.agents.models": ["models.chat"],
    "segresearch.agents.path_policy": ["policy.allowed_urls"],
    "segresearch.agents.backends.hf_local": ["models.hf_local"],
    "segresearch.graphs.nodes": ["graph.frame_blocks", "graph.search_tools"],
    "segresearch.core.media": ["media.handles", "media.video_index", "media.roots"],
    "segresearch.tools.search.base": ["search.kb_images"],
    "segresearch.tools.search.backends": ["search.backends"],
    "segresearch.tools.search.cache": ["search.caches"],
    "segresearch.tools.search.http": ["search.fetch_client"],
    "segresearch.tools.search.tools": ["search.resized_hits"],
    "segresearch.tools.search.kb.index": ["kb.indexes"],
    "segresearch.tools.search.kb.embedders": ["kb.embedders"],
    "segresearch.tools.segmenters.sam2": ["sam2.predictors"],
    "segresearch.servers.web": ["server.graph_client"],
    "segresearch.core.tool_protocol": ["tools.definitions"],
    "segresearch.agents.coord_style": ["models.checkpoint_families"],
    "segresearch.eval.rvos": ["eval.rvos_mask_dicts"],
}
# Caches whose modules need verl (slow to import here): found in the source instead.
RL_CACHES = {
    "segresearch.rl.verl_model": ["rl.prompt_ids"],
    "segresearch.rl.tools_template": ["rl.template_probes"],
    "segresearch.rl.placeholders": ["rl.text_renders", "rl.patch_counts"],
    "segresearch.rl.data": ["rl.blank_frames"],
    "segresearch.rl.postprocess_cache": ["rl.postprocess"],  # one per processor
    "segresearch.tools.search.kb.index": ["kb.query_vectors"],  # one per knowledge base
}
# Caches an object owns, one per owner, registered when the owner is made: found in the source.
OWNED_CACHES = {
    "segresearch.core.media_store": ["media.images", "media.recipes", "media.data_urls"],  # per store
    "segresearch.tools.search.cache": ["search.flights"],  # per SQLite cache object
}
PACKAGE = Path(__file__).resolve().parents[1] / "segresearch"
# functools caches of values fixed by the code itself (no data, nothing to clear or bound):
# pydantic adapters and bounds of a class, the process umask, a test model's template, the
# rollouts' own chat template.
CONSTANT_MEMOS = {"segresearch.agents.context", "segresearch.core.envvars",
                  "segresearch.core.files", "segresearch.testing.tiny_vlm", "segresearch.rl.tools_template",
                  "segresearch.compat.transformers"}


def _modules(known: dict[str, list[str]]) -> list:
    return [importlib.import_module(m) for m in known]


def _module_caches(module) -> dict[str, LoadOnce]:
    return {k: v for k, v in vars(module).items() if isinstance(v, LoadOnce)}


def _source_caches() -> dict[str, list[str]]:
    """Per module (by source, nothing imported): the names its ``LoadOnce`` calls register,
    and the hand-made caches and pools left in it (an ``OrderedDict``, a ``functools`` cache,
    a thread pool or a dict kept in a module global; a function-level ``with`` pool is work
    scoped to one call and is not one)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        text = path.read_text()
        if not re.search(r"LoadOnce|cache|OrderedDict|ThreadPoolExecutor|Future", text):
            continue
        tree = ast.parse(text)
        names = found.setdefault(module, [])
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LoadOnce":
                kw = {k.arg: k.value for k in node.keywords}
                names.append(kw["name"].value if "name" in kw else "<unnamed LoadOnce>")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for d in node.decorator_list:
                    used = ast.unparse(d)
                    if re.search(r"\b(lru_cache|cache)\b", used) and module not in CONSTANT_MEMOS:
                        names.append(f"<functools {used} on {node.name}>")
        for node in tree.body:  # module globals
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if isinstance(value, ast.Call):
                made = ast.unparse(value.func)
                if made.endswith(("OrderedDict", "ThreadPoolExecutor")) and module != "segresearch.core.shared_cache":
                    names.append(f"<module-level {made}>")
            if isinstance(value, ast.Dict) and isinstance(node, ast.AnnAssign) and not value.keys \
                    and "Future" in ast.unparse(node.annotation):
                names.append("<module-level dict of futures>")
    return {m: n for m, n in found.items() if n}


def test_every_process_cache_is_a_named_load_once():
    expected: dict[str, list[str]] = {}
    for known in (KNOWN_CACHES, RL_CACHES, OWNED_CACHES):
        for module, names in known.items():
            expected[module] = sorted(expected.get(module, []) + names)
    assert {m: sorted(n) for m, n in _source_caches().items()} == expected


def test_the_caches_of_the_imported_modules_are_registered_under_their_names():
    for module, names in zip(_modules(KNOWN_CACHES), KNOWN_CACHES.values(), strict=True):
        assert {c.name for c in _module_caches(module).values()} == set(names), module.__name__
        assert set(names) <= set(shared_cache.registered())


def test_clear_all_empties_every_registered_cache(tmp_path):
    from segresearch.agents import content
    from segresearch.core import media_store
    from segresearch.core.media import open_media, resolved_roots

    _modules(KNOWN_CACHES)
    (tmp_path / "a.png").write_bytes(_png())
    open_media(str(tmp_path / "a.png"), roots=None)
    resolved_roots(str(tmp_path))
    content.decode_image("data:image/png;base64," + base64.b64encode(_png()).decode())
    media_store.get_store()
    filled = ("media.handles", "media.roots", "content.decoded_images", "media.store")
    assert all(shared_cache.stats(n).size >= 1 for n in filled)
    shared_cache.clear_all()
    assert {n: shared_cache.stats(n).size for n in shared_cache.registered()} == dict.fromkeys(
        shared_cache.registered(), 0)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_thread_pools_are_made_once_with_sizes_from_the_settings(monkeypatch):
    monkeypatch.setenv("SEGRESEARCH_SEARCH_THREADS", "3")
    assert shared_cache.pool_size("search") == 3
    monkeypatch.setenv("SEGRESEARCH_FRAME_THREADS", "0")
    assert 1 <= shared_cache.pool_size("frames") <= 8  # automatic: the CPUs, at most 8
    monkeypatch.setenv("SEGRESEARCH_IMAGE_FETCH_THREADS", "0")
    with pytest.raises(EnvError, match="SEGRESEARCH_IMAGE_FETCH_THREADS"):
        shared_cache.pool_size("imgfetch")
    pool = shared_cache.thread_pool("frames")
    assert pool is shared_cache.thread_pool("frames")
    assert pool.submit(threading.current_thread).result().name.startswith("segresearch-frames")


def _private_cache_names() -> set[str]:
    """The module globals that hold caches, and the private parts of the cache type."""
    names = {"_items", "_flights", "_pending", "_key_locks", "_REGISTRY", "_POOLS",
             # the hand-made caches the registry replaced, so they do not come back in a test
             "_CACHE", "_VIDEO_INDEX", "_DECODE_CACHE", "_PROMPT_CACHE", "_STORE", "_query_vecs",
             "_loading", "_inflight"}
    for module in _modules(KNOWN_CACHES):
        names |= {k for k in _module_caches(module) if k.startswith("_")}
    return names


def test_no_test_or_benchmark_touches_a_private_cache_global():
    root = Path(__file__).resolve().parents[1]
    names = _private_cache_names()
    alternatives = "|".join(sorted(names, key=len, reverse=True))
    pattern = re.compile(r"""(\.|["'])(""" + alternatives + r""")\b""")
    found = []
    for path in [*sorted((root / "tests").rglob("*.py")), *sorted((root / "bench").rglob("*.py"))]:
        if path.resolve() == Path(__file__).resolve():
            continue  # this file names them to look for them
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not found, "use segresearch.core.shared_cache (clear, stats) instead:\n" + "\n".join(found)
