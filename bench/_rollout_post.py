"""verl's own per-trajectory post-processing, for the rollout bench.

verl's ``AgentLoopWorker`` ends every trajectory with ``_agent_loop_postprocess(output,
validate, **row)`` on its event loop (pad the ids, rebuild the pixel inputs with the
processor, M-RoPE position ids with ``get_rope_index``): CPU that every agent loop costs a
worker, whichever loop made the trajectory. The bench runs that very method on each
trajectory. A real ``AgentLoopWorker.__init__`` also needs a Ray server client, verl's full
trainer config and model config, and loads tools; none of that is read by the
post-processing, so :func:`postprocess_worker` sets exactly the attributes the method reads,
from the same values ``__init__`` takes them from.
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopWorker


def postprocess_worker(tokenizer: Any, processor: Any, trainer_config: Any) -> AgentLoopWorker:
    """An ``AgentLoopWorker`` whose ``_agent_loop_postprocess`` runs as in a rollout worker
    with this tokenizer, processor (the object the agent loops get too) and config."""
    worker = AgentLoopWorker.__new__(AgentLoopWorker)
    worker.config = trainer_config
    worker.rollout_config = trainer_config.actor_rollout_ref.rollout  # prompt_length, response_length
    worker.tokenizer = tokenizer
    worker.processor = processor
    worker.mm_processor_kwargs = trainer_config.data.get("mm_processor_kwargs", {})
    worker.reward_loop_worker_handles = None  # reward computed by the trainer, as in the presets
    worker.distillation_enabled = False
    return worker


async def postprocess(worker: AgentLoopWorker, output: Any, row: dict[str, Any]) -> Any:
    """verl's post-processing of one trajectory (``row``: the dataset fields the loop ran on)."""
    return await worker._agent_loop_postprocess(output, False, **row)
