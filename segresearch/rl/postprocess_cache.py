"""Per-image cache of the image processor's pixels for verl's post-processing.

Why: after every trajectory, verl's ``AgentLoopWorker._agent_loop_postprocess`` rebuilds the
model inputs from the token ids and images (``_compute_multi_modal_inputs``: the whole HF
processor over every image of the trajectory; then M-RoPE positions from the grids), inline
on the worker's event loop. That is 100-200 ms of CPU per trajectory with 7 frames and a
keyframe, more than our whole rollout of it, and the 8 samples of a GRPO group (and the turns
of a trajectory, in verl's own loop) put the same frames through the same resize, rescale,
normalise and patchify again and again.

What it patches: one attribute, ``processor.image_processor``, of the processor object that
verl's AgentLoopWorker makes once, hands to every agent loop it instantiates
(``processor=self.processor``) and then uses itself in post-processing. Our agent loop
installs :class:`CachingImageProcessor` there once per worker (:func:`install`, idempotent;
switched off by the agent-loop option ``postprocess_cache: false``). Everything that is not
an image call (attributes, ``fetch_images``, ``get_number_of_image_patches`` …) reads and
writes the real image processor. Nothing else of verl or transformers is changed.

Why the answer is exact: the Qwen2-VL family's image processors (``Qwen2VLImageProcessor``
and ``Qwen2VLImageProcessorPil``, used by Qwen2-VL, Qwen2.5-VL and Qwen3-VL) process every
image on its own and concatenate the per-image ``pixel_values`` (patches) and
``image_grid_thw`` (one row per image) along the first axis; the torch backend groups
same-size images into one batch only off the CPU, and PIL images are on the CPU. So a call
over N images is N one-image calls concatenated, and one image's rows depend only on its
pixels, the processor's settings and the call's options, which is what an entry is keyed by:
the media store's content digest (mode, size and RGB bytes: a changed image is another key),
the image processor's class and settings, and the call's keyword arguments. The cache answers
only a flat list of PIL images with keyword arguments it knows to be per-image options, and
only for that family; videos, arrays, tensors, nested batches, other options (``device``,
``disable_grouping``) and other processors go to the real image processor unchanged.
tests/test_rl_postprocess_cache.py compares ``_agent_loop_postprocess`` with and without it,
tensor by tensor and byte by byte.

Entries hold the processor's arrays before its tensor conversion; a call gets them
concatenated (a new array, as the processor's own concatenation makes) and converted as the
processor converts its output, so nothing downstream can change a cached entry. Entries are
bounded by bytes (LRU).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from segresearch.core.media_recipes import digest_of
from segresearch.core.shared_cache import LoadOnce

DEFAULT_MAX_MB = 512
# Image processors whose output for N images is their N one-image outputs concatenated.
_PER_IMAGE_FAMILY = frozenset({"Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil"})
_OUTPUT_KEYS = ("pixel_values", "image_grid_thw")
# Call options that act on each image alone (Qwen2VLImageProcessorKwargs and the common
# per-image ImagesKwargs); anything else goes to the real image processor.
_PER_IMAGE_KWARGS = frozenset({
    "return_tensors", "do_resize", "size", "min_pixels", "max_pixels", "resample", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb", "patch_size",
    "temporal_patch_size", "merge_size",
})
_SIMPLE = (str, int, float, bool, type(None))


@dataclass
class CacheStats:
    hits: int = 0  # images answered from the cache
    misses: int = 0  # distinct images computed (in one call per request) and kept
    delegated: int = 0  # calls passed whole to the real image processor
    evicted: int = 0
    bytes: int = 0
    entries: int = 0


class _BytesLRU:
    """Least-recently-used entries under a byte budget (thread-safe: verl's loops also call
    the processor from executor threads); a registered cache ("rl.postprocess"), one per
    processor, with the counts this module reports kept beside it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._lru: LoadOnce[tuple[dict[str, Any], int]] = LoadOnce(
            name="rl.postprocess", max_weight=self.max_bytes, weigh=lambda entry: entry[1])
        self.stats = CacheStats()

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        hit = self._lru.peek(key)
        return None if hit is None else hit[0]

    def put(self, key: tuple[str, str], value: dict[str, Any], nbytes: int) -> None:
        self._lru.put(key, (value, nbytes))
        held = self._lru.stats()
        self.stats.bytes, self.stats.entries, self.stats.evicted = held.weight, held.size, held.evictions

    def clear(self) -> None:
        self._lru.clear()
        self.stats.bytes = self.stats.entries = 0


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    return int(value.element_size() * value.nelement())


def _join(parts: list[Any], torch_out: bool) -> Any:
    """The per-image arrays (or tensors) concatenated along the first axis, as the image
    processor concatenates them; always a new array. With ``torch_out`` numpy parts are
    concatenated by torch straight into the tensor the processor's conversion would give (the
    same values, dtype and shape; numpy's own concatenation into fresh memory was 2-3× slower
    here, and the processor's conversion would then only wrap it)."""
    if isinstance(parts[0], np.ndarray) and not torch_out:
        return np.concatenate(parts, axis=0)
    import torch  # heavy: torch, optional ([hf]/[gpu] extras)

    return torch.cat([torch.from_numpy(p) if isinstance(p, np.ndarray) else p for p in parts], dim=0)


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON data, or raise TypeError when it is not a simple option value
    (then the call is not answered from the cache)."""
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # SizeDict
        return [type(value).__name__, {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}]
    raise TypeError(type(value).__name__)


class CachingImageProcessor:
    """The real image processor, except that image calls are answered image by image from a
    content-keyed cache (see the module docstring for when, and why that is exact)."""

    _OWN = frozenset({"_inner", "_cache"})

    def __init__(self, inner: Any, max_bytes: int = DEFAULT_MAX_MB << 20) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_cache", _BytesLRU(max_bytes))

    # Attribute reads and writes are the real image processor's (settings changed through
    # the wrapper change the real processor, and with it the cache keys).
    def __getattr__(self, name: str) -> Any:
        if name in CachingImageProcessor._OWN:
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CachingImageProcessor, (self._inner, self._cache.max_bytes))

    @property
    def wrapped(self) -> Any:
        return self._inner

    @property
    def stats(self) -> CacheStats:
        return self._cache.stats

    @property
    def max_bytes(self) -> int:
        return self._cache.max_bytes

    def clear(self) -> None:
        self._cache.clear()

    def __call__(self, images: Any = None, *args: Any, **kwargs: Any) -> Any:
        settings = self._settings_key(images, args, kwargs)
        if settings is None:
            self._cache.stats.delegated += 1
            return self._inner(images, *args, **kwargs)
        keys = [(digest_of(img), settings) for img in images]
        found: dict[tuple[str, str], dict[str, Any]] = {}
        todo: dict[tuple[str, str], Image.Image] = {}  # missing, each once (first image of its key)
        for key, img in zip(keys, images, strict=True):
            if key in found or key in todo:
                continue
            out = self._cache.get(key)
            if out is None:
                todo[key] = img
            else:
                found[key] = out
        if todo:
            # One call for all the missing images, split per image: a miss then costs what
            # the uncached call costs (one-image calls each pay the processor's per-call work).
            made = self._many(list(todo.values()), kwargs)
            if made is None:  # not the layout this cache knows: the real call, whole
                self._cache.stats.delegated += 1
                return self._inner(images, *args, **kwargs)
            for key, out in zip(todo, made, strict=True):
                self._cache.put(key, out, sum(_nbytes(v) for v in out.values()))
                found[key] = out
        self._cache.stats.misses += len(todo)
        self._cache.stats.hits += len(images) - len(todo)
        per_image = [found[key] for key in keys]
        from transformers.image_processing_utils import BatchFeature  # heavy: optional [hf] extra
        from transformers.utils import TensorType  # heavy: optional [hf] extra

        # The processor's own last step: its arrays, concatenated, converted to the tensors
        # asked for (from the call, else the processor's default).
        tensors = kwargs["return_tensors"] if "return_tensors" in kwargs else getattr(self._inner, "return_tensors", None)
        torch_out = tensors is not None and TensorType(tensors) == TensorType.PYTORCH
        data = {k: _join([o[k] for o in per_image], torch_out) for k in _OUTPUT_KEYS}
        return BatchFeature(data=data, tensor_type=tensors)

    def _many(self, imgs: list[Image.Image], kwargs: dict[str, Any]) -> list[dict[str, Any]] | None:
        """``imgs`` through the real image processor in one call, before any tensor
        conversion, cut into each image's two outputs (its ``image_grid_thw`` row and the
        t·h·w ``pixel_values`` rows it names; each a copy, so an entry never holds the whole
        batch); None when the output has another layout."""
        out = self._inner(imgs, **{**kwargs, "return_tensors": None})
        if set(out.keys()) != set(_OUTPUT_KEYS):
            return None
        pixels, grid = out["pixel_values"], out["image_grid_thw"]
        if not all(isinstance(v, np.ndarray) or hasattr(v, "element_size") for v in (pixels, grid)):
            return None
        rows = np.asarray(grid).reshape(-1, 3).prod(axis=1) if len(grid) == len(imgs) else None
        if rows is None or int(rows.sum()) != pixels.shape[0]:
            return None
        copy = (lambda a: a.copy()) if isinstance(pixels, np.ndarray) else (lambda a: a.clone())
        ends = np.cumsum(rows).tolist()
        starts = [0, *ends[:-1]]
        return [{"pixel_values": copy(pixels[a:b]), "image_grid_thw": copy(grid[i:i + 1])}
                for i, (a, b) in enumerate(zip(starts, ends, strict=True))]

    def _settings_key(self, images: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """What besides its pixels decides an image's output, as a key; None when the call
        is not one this cache answers exactly."""
        if args or not isinstance(images, (list, tuple)) or not images:
            return None
        if not all(isinstance(img, Image.Image) for img in images):
            return None
        if any(k not in _PER_IMAGE_KWARGS for k in kwargs):
            return None
        if not supports(self._inner):
            return None
        try:  # entries are kept before the tensor conversion, which is then the caller's
            call = {k: _canonical(v) for k, v in kwargs.items() if k != "return_tensors"}
            settings = json.dumps(vars(self._inner), sort_keys=True, default=repr)
        except (TypeError, ValueError):
            return None
        return json.dumps([type(self._inner).__qualname__, settings, call], sort_keys=True)


def supports(image_processor: Any) -> bool:
    """Whether ``image_processor`` is of the per-image family this cache is exact for."""
    return any(c.__name__ in _PER_IMAGE_FAMILY for c in type(image_processor).__mro__)


def install(processor: Any, max_bytes: int = DEFAULT_MAX_MB << 20) -> CachingImageProcessor | None:
    """Put the caching wrapper on ``processor.image_processor`` (once: a processor that has
    it keeps its cache). None where it does not apply (no processor, or another kind of
    image processor)."""
    ip = getattr(processor, "image_processor", None)
    if isinstance(ip, CachingImageProcessor):
        return ip
    if ip is None or not supports(ip):
        return None
    wrapper = CachingImageProcessor(ip, max_bytes)
    processor.image_processor = wrapper
    return wrapper


def uninstall(processor: Any) -> None:
    """Give ``processor`` its real image processor back (a no-op without the wrapper)."""
    ip = getattr(processor, "image_processor", None)
    if isinstance(ip, CachingImageProcessor):
        processor.image_processor = ip.wrapped


def installed(processor: Any) -> CachingImageProcessor | None:
    ip = getattr(processor, "image_processor", None)
    return ip if isinstance(ip, CachingImageProcessor) else None


__all__: Sequence[str] = ("CacheStats", "CachingImageProcessor", "DEFAULT_MAX_MB", "install", "installed",
                          "supports", "uninstall")
