"""Noise keys: one 64-bit key per (sample, member), and noise drawn from each key alone.

A stochastic family draws all the noise of member ``m`` of sample ``n`` from a generator seeded
by ``keys[n, m]`` and nothing else, so a member does not depend on its batch-mates, on the
batch size, on the Dask chunking or on which other members were asked for: member 7 can be
regenerated alone. The keys are made here and only here, by :func:`make_keys`; families draw
with :class:`KeyedNoise`.

>>> keys = make_keys(0, np.array(["2009-01-16T12:00"], "datetime64[s]"), [0], members=3)
>>> keys.shape, keys.dtype
((1, 3), dtype('int64'))
>>> noise = KeyedNoise(keys).randn((2,))
>>> tuple(noise.shape)
(3, 2)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ShapeError
from ..layout.timeaxis import format_time


def member_indices(members: int | Sequence[int]) -> np.ndarray:
    """Member indices: ``range(members)`` for a count, else the given distinct indices >= 0.

    >>> member_indices(3).tolist(), member_indices([7]).tolist()
    ([0, 1, 2], [7])
    """
    if isinstance(members, (bool, np.bool_)):
        raise ConfigError(f"members must be a count >= 1 or a list of member indices, got {members!r}.")
    if isinstance(members, (int, np.integer)):
        if int(members) < 1:
            raise ConfigError(f"members must be at least 1, got {members}.")
        return np.arange(int(members), dtype=np.int64)
    try:
        indices = np.asarray(list(members))
    except TypeError as err:
        raise ConfigError(f"members must be a count >= 1 or a list of member indices, got {members!r}.") from err
    if indices.ndim != 1 or indices.size == 0 or indices.dtype.kind not in "iu" or (indices < 0).any():
        raise ConfigError(
            f"members must be a count >= 1 or a non-empty list of member indices >= 0, got {members!r}.")
    if len(np.unique(indices)) != indices.size:
        raise ConfigError(f"member indices must be distinct, got {indices.tolist()}.")
    return indices.astype(np.int64)


def key_of(seed: int, init_time: Any, sample: int, member: int) -> int:
    """The key of one (init time, sample, member): BLAKE2b with an 8-byte digest of the text
    ``f"{seed}|{iso}|{sample}|{member}"``, read as a signed little-endian int64.

    ``iso`` is :func:`xearthformer.layout.timeaxis.format_time` of the init time: ISO 8601
    ``YYYY-MM-DDTHH:MM:SS`` (``.ffffff`` appended only when the microseconds are not zero), the
    same text for numpy datetimes, pandas Timestamps, Python datetimes and cftime dates of any
    calendar; other values (e.g. an integer sample number) are written with ``str``.

    >>> key_of(0, np.datetime64("2009-01-16T12:00:00"), 0, 0) == key_of(
    ...     0, np.datetime64("2009-01-16T12:00:00.000"), 0, 0)
    True
    """
    text = f"{int(seed)}|{format_time(init_time)}|{int(sample)}|{int(member)}"
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def make_keys(seed: int, init_times: Any, sample_index: Any, members: int | Sequence[int]) -> np.ndarray:
    """Noise keys of N samples x M members, (N, M) int64 (see :func:`key_of` for the hash).

    Parameters
    ----------
    seed : int
        The run's seed: other seeds give independent ensembles.
    init_times : array-like
        (N,) the init time of each sample (numpy datetime64 or cftime values).
    sample_index : int or array-like
        (N,) each sample's position along the input's extra (non time/space) dims, flattened
        in C order (0 for inputs without extra dims); a scalar applies to every row.
    members : int or sequence of int
        A count M (members 0..M-1) or the member indices themselves (``[7]``: member 7 alone,
        with the same key it has in a larger ensemble).

    Returns
    -------
    np.ndarray
        int64 (N, M): ``keys[n, j]`` is the key of sample n, member ``members[j]``.

    Examples
    --------
    >>> inits = np.array(["2009-01", "2009-02"], "datetime64[M]")
    >>> k = make_keys(0, inits, 0, 4)
    >>> bool((make_keys(0, inits, 0, [2])[:, 0] == k[:, 2]).all())
    True
    """
    inits = np.atleast_1d(np.asarray(init_times))
    if inits.ndim != 1:
        raise ShapeError(f"init_times must be one time per sample (N,), got shape {inits.shape}.")
    samples = np.broadcast_to(np.asarray(sample_index, dtype=np.int64), inits.shape)
    indices = member_indices(members)
    keys = np.empty((inits.size, indices.size), dtype=np.int64)
    for n, (init, sample) in enumerate(zip(inits, samples)):
        for j, member in enumerate(indices):
            keys[n, j] = key_of(seed, init, int(sample), int(member))
    return keys


class KeyedNoise:
    """Gaussian noise drawn key by key: key ``k`` feeds its own CPU ``torch.Generator``.

    The generators live as long as this object, so successive :meth:`randn` calls continue
    each key's own stream (a sampler's step 2 noise follows its step 1 noise). The draws of a
    key are bit-identical whatever other keys share the object (the batch composition).

    Parameters
    ----------
    keys : Tensor or array-like of int64
        Any shape; flattened to (K,) in C order.

    Examples
    --------
    >>> alone = KeyedNoise([5]).randn((3,))
    >>> batch = KeyedNoise([1, 5, 9]).randn((3,))
    >>> bool(torch.equal(alone[0], batch[1]))
    True
    """

    def __init__(self, keys: Any) -> None:
        flat = keys.detach().cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        flat = flat.reshape(-1)
        if flat.dtype.kind not in "iu":
            raise ShapeError(f"noise keys must be integers (int64), got dtype {flat.dtype}; "
                             "make them with xearthformer.models.keys.make_keys.")
        self.keys = flat.astype(np.int64)
        self._generators = [torch.Generator(device="cpu").manual_seed(int(k)) for k in self.keys]

    def __len__(self) -> int:
        return len(self._generators)

    def randn(self, shape: Sequence[int], *, device: Any = None, dtype: torch.dtype | None = None
              ) -> torch.Tensor:
        """Standard normal noise (K, *shape): row k from key k's generator.

        Drawn in float32 on the CPU (so the values do not depend on the device or dtype asked
        for), then moved to ``device`` and cast to ``dtype``.
        """
        shape = tuple(int(s) for s in shape)
        draws = [torch.randn(shape, generator=g, dtype=torch.float32) for g in self._generators]
        out = torch.stack(draws) if draws else torch.empty((0, *shape))
        return out.to(device=device, dtype=dtype or torch.float32)
