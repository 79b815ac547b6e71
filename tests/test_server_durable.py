"""The durable engine: ``serve graph --database postgresql://… --redis redis://…``.

Real PostgreSQL and Redis (Debian's packages, started here on free loopback ports), real
server processes, the real SDK; the model is an OpenAI-compatible server in this process
that counts every model turn it serves, so "redone work" is measured, not guessed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from segresearch.servers.langgraph_server import port_free
from segresearch.testing.counting_model import CountingModelServer, keyframe_script
from segresearch.testing.databases import new_deployment
from segresearch.testing.scenes import render_scene, write_frames
from segresearch.testing.servers import ServerDidNotStart, free_port, start_graph_server

pytestmark = pytest.mark.network

FRAMES = [0, 2, 4, 7]  # what num_frames=4 shows of an 8-frame clip


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    frames, _ = render_scene(n_frames=8, size=(96, 72))
    write_frames(frames, root / "frames")
    return root


class Deployment:
    """Server processes on one database, one Redis and one state folder."""

    def __init__(self, tmp: Path, services: dict, media: Path, model: CountingModelServer,
                 extra_env: dict[str, str] | None = None) -> None:
        self.db, self.redis = new_deployment(services)
        self.tmp = tmp
        self.media = media
        self.env = {k: v for k, v in os.environ.items() if k != "SEGRESEARCH_API_TOKEN"}
        self.env.update({"SEGRESEARCH_MEDIA_ROOTS": str(media), "SEGRESEARCH_SEGMENTER": "none",
                         "SEGRESEARCH_SEARCH": "none", "SEGRESEARCH_NUM_FRAMES": "4",
                         "SEGRESEARCH_MODEL": model.spec(), "OPENAI_API_KEY": "sk-test-operator",
                         **(extra_env or {})})
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, port: int | None = None) -> str:
        log = self.tmp / f"server-{len(self.logs)}.log"
        try:
            proc, url = start_graph_server(
                self.tmp / "state", self.env, log, jobs=8, port=port or free_port(), timeout=120,
                args=["--database", self.db, "--redis", self.redis, "--heartbeat", "1"])
        except ServerDidNotStart as e:
            pytest.fail(str(e))
        self.procs.append(proc)
        self.logs.append(log)
        return url

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _client(url: str):
    from langgraph_sdk import get_client

    return get_client(url=url, timeout=httpx.Timeout(120, connect=10))


def _input(media: Path, tag: str) -> dict[str, str]:
    return {"query": f"the blue square [tag:{tag}]", "media": str(media / "frames")}


async def _wait_status(client, thread_id: str, run_id: str, want: set[str], timeout: float) -> dict:
    deadline = time.time() + timeout
    run = {}
    while time.time() < deadline:
        run = await client.runs.get(thread_id, run_id)
        if run["status"] in want:
            return run
        await asyncio.sleep(0.2)
    raise AssertionError(f"run stayed {run.get('status')!r} for {timeout} s")


def test_kill_9_mid_run_resumes_without_redoing_finished_turns(tmp_path, pg_services, media):
    """Every server process is killed (SIGKILL) while turn 3 of 5 is in flight; a new server
    on the same database finishes the run. Turns 0-2 were each served once: no finished model
    turn is sent again (only the one in flight may be). A run that had finished before the
    crash is never executed again and its state is intact."""
    model = CountingModelServer(keyframe_script(FRAMES), delay=0.4)
    dep = Deployment(tmp_path, pg_services, media, model)
    try:
        url = dep.start()
        proc = dep.procs[0]
        children = psutil.Process(proc.pid).children(recursive=True)

        async def before_crash():
            c = _client(url)
            done_thread = await c.threads.create()
            done = await c.runs.wait(done_thread["thread_id"], "seg_research",
                                     input=_input(media, "finished"))
            assert done["stop_reason"] == "answer", done
            thread = await c.threads.create()
            run = await c.runs.create(thread["thread_id"], "seg_research", input=_input(media, "crash"))
            return done_thread["thread_id"], done, thread["thread_id"], run["run_id"]

        done_id, done_values, thread_id, run_id = asyncio.run(before_crash())
        assert model.wait_for_turn("crash", 3, timeout=60), model.turns_started("crash")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for child in children:  # nothing the server started outlives it
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert port_free("127.0.0.1", int(url.rsplit(":", 1)[1]))
        served_before = model.turns_served("crash")
        assert served_before == {0: 1, 1: 1, 2: 1}, served_before

        url2 = dep.start()

        async def after_crash():
            c = _client(url2)
            run = await _wait_status(c, thread_id, run_id, {"success", "error"}, timeout=90)
            state = await c.threads.get_state(thread_id)
            done_state = await c.threads.get_state(done_id)
            done_runs = await c.runs.list(done_id)
            return run, state["values"], done_state["values"], done_runs

        run, values, done_after, done_runs = asyncio.run(after_crash())
        assert run["status"] == "success", run
        assert values["stop_reason"] == "answer" and values["turns"] == 5, values
        turns = model.turns_served("crash")
        assert {k: turns.get(k) for k in (0, 1, 2)} == {0: 1, 1: 1, 2: 1}, turns
        assert turns.get(3, 0) <= 2 and turns.get(4) == 1, turns
        # The run finished before the crash: executed once, state as it was.
        assert model.turns_served("finished") == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
        assert [r["status"] for r in done_runs] == ["success"]
        assert done_after["answer"] == done_values["answer"] and done_after["turns"] == 5
    finally:
        dep.stop_all()
        model.close()


def test_two_replicas_share_threads_runs_and_streams(tmp_path, pg_services, media):
    """Two server processes on one database: a thread made through one is run, joined,
    streamed and resumed through the other, and runs are executed by both."""
    model = CountingModelServer(keyframe_script(FRAMES[:1]), delay=0.2)
    dep = Deployment(tmp_path, pg_services, media, model)
    try:
        a, b = dep.start(), dep.start()

        async def go():
            ca, cb = _client(a), _client(b)
            assert {x["assistant_id"] for x in await ca.assistants.search()} == \
                {x["assistant_id"] for x in await cb.assistants.search()}
            thread = await ca.threads.create(metadata={"made_by": "a"})
            tid = thread["thread_id"]
            assert (await cb.threads.get(tid))["metadata"]["made_by"] == "a"
            run = await ca.runs.create(tid, "seg_research", input=_input(media, "shared"))
            events = [p async for p in cb.runs.join_stream(tid, run["run_id"], stream_mode="values")]
            joined = await cb.runs.join(tid, run["run_id"])
            assert joined["stop_reason"] == "answer", joined
            assert any(getattr(p, "event", "") in ("values", "end") for p in events)
            # Review: paused through A, resumed through B.
            t2 = (await ca.threads.create())["thread_id"]
            paused = await ca.runs.wait(t2, "seg_research", input=_input(media, "review"),
                                        context={"review": True, "output_dir": "r1"})
            state = await cb.threads.get_state(t2)
            assert state["interrupts"] or any(t.get("interrupts") for t in state["tasks"]), paused
            final = await cb.runs.wait(t2, "seg_research", command={"resume": "accept"},
                                       context={"review": True, "output_dir": "r1"})
            assert final["stop_reason"] == "answer" and final["reviewed"]["decision"] == "accept"
            # Many runs: both processes take some.
            threads = [(await cb.threads.create())["thread_id"] for _ in range(12)]
            runs = [await (ca if i % 2 else cb).runs.create(t, "seg_research",
                                                            input=_input(media, f"many{i}"))
                    for i, t in enumerate(threads)]
            for t, r in zip(threads, runs, strict=True):
                assert (await ca.runs.join(t, r["run_id"]))["stop_reason"] == "answer"
            return [r["run_id"] for r in runs]

        run_ids = asyncio.run(go())
        executed_by = [sum(any(rid in line for rid in run_ids)
                           for line in log.read_text().splitlines()
                           if "Background run succeeded" in line) for log in dep.logs]
        assert sum(executed_by) == len(run_ids) and all(n > 0 for n in executed_by), executed_by
    finally:
        dep.stop_all()
        model.close()


def test_durable_engine_needs_redis_and_a_postgres_url(tmp_path):
    """Misconfiguration is one line and a non-zero exit, before anything starts."""
    import sys

    base = [sys.executable, "-m", "segresearch", "serve", "graph", "--port", str(free_port()),
            "--state-dir", str(tmp_path / "s")]
    cases = [
        (["--database", "postgresql://u:pw@127.0.0.1:1/x"], "needs Redis"),
        (["--database", "mysql://u@h/x", "--redis", "redis://h:1/0"], "PostgreSQL URL"),
        (["--redis", "redis://h:1/0"], "--redis needs --database"),
        (["--cors-origin", "not an origin"], "--cors-origin"),
        (["--database", "postgresql://u:pw@127.0.0.1:1/x", "--redis", "redis://127.0.0.1:1/0"],
         "cannot use the PostgreSQL database postgresql://u:***@127.0.0.1:1/x"),
    ]
    for extra, needle in cases:
        out = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        assert needle in out.stderr and "pw" not in out.stderr, out.stderr
        assert "Traceback" not in out.stderr

