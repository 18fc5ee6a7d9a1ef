"""Memory planning: how many samples a model call may take, and whether a forecast chunk fits,
decided *before* running, instead of the operating system killing the process.

:func:`plan_batch` is the one planner (used by :func:`xearthformer.forecast.predict_tensor`, so
by ``forecast``, ``ensemble``, ``evaluate`` and the archive command alike). Its model of memory:

* **available**: on the CPU, the host memory this process may still use (``MemAvailable``,
  capped by the cgroup limit of a container or batch job); on CUDA, the device's free memory
  plus what torch holds cached. :data:`MEMORY_LIMIT_ENV` overrides it (tests inject small
  limits this way; it also caps a run on a shared machine).
* **needed**: ``fixed + batch * per_item`` bytes, where ``fixed`` is what the chunk holds
  anyway (its input windows and output array; the weights, on a device they are not on yet)
  and ``per_item`` is one sample's (or one (sample, member) pair's) inputs, outputs and the
  network's activations (:func:`activation_bytes`: the network's own
  ``inference_bytes_per_sample()`` when its family provides one, else a rough default from
  the parameter count and tensor sizes).
* only :data:`SAFETY` of what is available is planned for: the rest is headroom for the
  allocator, Python objects and estimate error.

The planner picks the largest batch that fits (at most the default or the requested one), or
refuses with :class:`~xearthformer.errors.ConfigError` naming the setting to change. On CUDA,
:func:`is_out_of_memory` lets the inference loop halve the batch and retry when the estimate
was too low.

>>> plan_batch(per_item=100, fixed=0, items=50, available=10_000).batch_size
50
>>> plan_batch(per_item=100, fixed=0, items=500, available=10_000).batch_size
70
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: environment variable holding a memory limit (``"512MiB"``, ``"2G"``, ``"1e9"``) that replaces
#: what the system reports (per process, for the device the model runs on)
MEMORY_LIMIT_ENV = "XEARTHFORMER_MEMORY_LIMIT"
#: fraction of the available memory that plans may use
SAFETY = 0.7
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """A byte count from ``"512MiB"``, ``"2 GB"``, ``"1e9"`` or a number.

    >>> parse_bytes("1.5GiB"), parse_bytes("200 MB"), parse_bytes(4096)
    (1610612736, 200000000, 4096)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Z]*)\s*", str(text))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ConfigError(f"cannot read {text!r} as an amount of memory; expected e.g. '512MiB', "
                              "'2GB' or a number of bytes.")
        try:
            value = float(match.group(1))
        except ValueError as err:
            raise ConfigError(f"cannot read {text!r} as an amount of memory; expected e.g. '512MiB'.") from err
        unit = match.group(2).lower()
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"a memory amount must be positive, got {text!r}.")
    return int(value * _UNITS[unit])


def format_bytes(n: float) -> str:
    """``n`` bytes as text with a binary unit.

    >>> format_bytes(3 * 2**20)
    '3.0 MiB'
    """
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _cgroup_free() -> int | None:
    """Bytes left under the cgroup (v2, else v1) memory limit of this process, if it has one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - usage)
    return None


def _host_available() -> int:
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        free = None
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not POSIX: assume plenty, plan by default
            free = 2**40
    cgroup = _cgroup_free()
    return free if cgroup is None else min(free, cgroup)


def available_bytes(device: Any = None) -> int:
    """Memory this process may still use on ``device`` (None or CPU: host memory).

    :data:`MEMORY_LIMIT_ENV`, when set, is returned instead (an injected limit).
    """
    limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if limit:
        return parse_bytes(limit)
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return _host_available()


def activation_bytes(network: Any, input_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> int:
    """Bytes one sample's pass through ``network`` needs at its peak, in inference mode.

    The network's own ``inference_bytes_per_sample()`` when it has one (a family's estimate
    from its architecture); otherwise a deliberately generous default: the sample's input and
    output sizes times a width that grows with the square root of the parameter count
    (``4 * (in + out) * (32 + sqrt(P) / 2)`` bytes, which on Earthformer presets overestimates by
    1.5-3x).
    """
    own = getattr(network, "inference_bytes_per_sample", None)
    if callable(own):
        return int(own())
    params = sum(int(p.numel()) for p in network.parameters()) if hasattr(network, "parameters") else 0
    numel = math.prod(input_shape) + math.prod(target_shape)
    return int(4 * numel * (32 + math.sqrt(params) / 2))


@dataclass(frozen=True)
class MemoryPlan:
    """What :func:`plan_batch` decided.

    Attributes
    ----------
    batch_size : int
        Items per model call.
    per_item, fixed, available : int
        The estimate's parts, in bytes (see the module docstring).
    """

    batch_size: int
    per_item: int
    fixed: int
    available: int

    @property
    def needed(self) -> int:
        """Bytes the plan expects to use."""
        return self.fixed + self.batch_size * self.per_item

    def __str__(self) -> str:
        return (f"batch of {self.batch_size}: ~{format_bytes(self.needed)} of "
                f"{format_bytes(self.available)} available")


def plan_batch(per_item: int, *, items: int, fixed: int = 0, requested: int | None = None,
               default: int | None = None, available: int | None = None, device: Any = None,
               setting: str = "batch_size", what: str = "samples per model call",
               fixes: str = "") -> MemoryPlan:
    """The largest batch that fits, or a ConfigError that says what to change.

    Parameters
    ----------
    per_item : int
        Bytes each item (sample, or (sample, member) pair) adds.
    items : int
        Items to process in all (the batch never exceeds it).
    fixed : int
        Bytes needed whatever the batch size.
    requested : int, optional
        A batch size the user asked for: kept if it fits, else refused.
    default : int, optional
        The largest batch to choose on its own (None: ``items``).
    available : int, optional
        Bytes available (default: :func:`available_bytes` of ``device``).
    device : optional
        Where the memory is (None: the host).
    setting, what, fixes : str
        The setting that sets the batch, what a batch counts, and other fixes, for messages.

    Returns
    -------
    MemoryPlan

    Raises
    ------
    ConfigError
        Not even one item fits, or ``requested`` does not.

    Examples
    --------
    >>> plan_batch(per_item=100, items=8, fixed=9_000, available=10_000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xearthformer.errors.ConfigError: not enough memory for one sample per model call: ...
    """
    per_item, fixed, items = max(1, int(per_item)), max(0, int(fixed)), max(1, int(items))
    avail = available_bytes(device) if available is None else int(available)
    budget = int(avail * SAFETY) - fixed
    fits = budget // per_item if budget > 0 else 0
    where = "host memory" if device is None or str(device).startswith("cpu") else f"memory on {device}"
    extra = f" {fixes}" if fixes else ""
    if fits < 1:
        raise ConfigError(
            f"not enough memory for one sample per model call: {what} need "
            f"~{format_bytes(per_item)} each on top of ~{format_bytes(fixed)} for the chunk, but "
            f"only {format_bytes(avail)} of {where} is available (plans use {SAFETY:.0%} of it).{extra} "
            f"(The limit comes from the system, or from ${MEMORY_LIMIT_ENV} when set.)"
        )
    if requested is not None:
        requested = min(int(requested), items)  # a batch is never larger than the work
        if requested > fits:
            raise ConfigError(
                f"{setting}={requested} needs ~{format_bytes(fixed + int(requested) * per_item)} of "
                f"{where}, but {format_bytes(avail)} is available: at most {int(fits)} {what} fit. "
                f"Fix: pass {setting}={int(fits)} or less (or leave it unset to have it chosen).{extra}"
            )
        return MemoryPlan(requested, per_item, fixed, avail)
    batch = min(items, int(fits), items if default is None else max(1, int(default)))
    return MemoryPlan(batch, per_item, fixed, avail)


def check_fits(needed: int, *, what: str, fixes: str, available: int | None = None,
               device: Any = None) -> None:
    """Refuse work that needs ``needed`` bytes at once when they do not fit (:data:`SAFETY`)."""
    avail = available_bytes(device) if available is None else int(available)
    if needed > avail * SAFETY:
        raise ConfigError(
            f"{what} needs ~{format_bytes(needed)} of host memory at once, but {format_bytes(avail)} is "
            f"available (plans use {SAFETY:.0%} of it). Fix: {fixes} (The limit comes from the "
            f"system, or from ${MEMORY_LIMIT_ENV} when set.)"
        )


def is_out_of_memory(err: BaseException) -> bool:
    """True for an allocation failure that a smaller batch may avoid: torch's
    ``OutOfMemoryError`` (CUDA and other accelerators) or the CPU allocator's refusal."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
