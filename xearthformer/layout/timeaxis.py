"""Time steps and calendars: the regular step of a time axis, shifting times by steps in
their own calendar, and the ``init_time``/``lead_time``/``valid_time`` coordinates of a forecast.

Fixed steps (days..seconds) give a timedelta ``lead_time``; calendar steps (months, years)
give an integer ``lead_time`` with ``units`` "months"/"years" (climpred's convention).
``valid_time`` is computed in the data's own calendar (cftime stays cftime).

>>> infer_step(np.array(["2000-01-01T00", "2000-01-01T06"], "M8[s]"))
TimeStep(n=6, unit='hours')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ConfigError, DataError

FIXED_UNITS = ("days", "hours", "minutes", "seconds")
CALENDAR_UNITS = ("months", "years")
_UNIT_NS = {"days": 86_400 * 10**9, "hours": 3_600 * 10**9, "minutes": 60 * 10**9,
            "seconds": 10**9}
#: variable attributes carried from the data into the spec and onto decoded output


@dataclass(frozen=True)
class TimeStep:
    """A regular time step: ``n`` units, fixed (days..seconds) or calendar (months/years).

    Examples
    --------
    >>> TimeStep(6, "hours").is_calendar
    False
    >>> TimeStep(1, "months").is_calendar
    True
    """

    n: int
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in FIXED_UNITS + CALENDAR_UNITS:
            raise ConfigError(
                f"time step unit {self.unit!r} is unknown; expected one of "
                f"{FIXED_UNITS + CALENDAR_UNITS}."
            )
        if int(self.n) < 1:
            raise ConfigError(f"time step must be positive, got {self.n} {self.unit}.")

    @property
    def is_calendar(self) -> bool:
        """True for months/years (integer lead_time), False for fixed steps (timedelta)."""
        return self.unit in CALENDAR_UNITS

    def to_timedelta(self) -> np.timedelta64:
        """The step as ``timedelta64[ns]``; ConfigError for calendar steps."""
        if self.is_calendar:
            raise ConfigError(f"a step of {self} has no fixed length; use add_steps().")
        return np.timedelta64(int(self.n) * _UNIT_NS[self.unit], "ns")

    def __str__(self) -> str:
        return f"{self.n} {self.unit}"


def time_parts(times: np.ndarray) -> dict[str, np.ndarray]:
    """Calendar fields of datetime64 or cftime values (in their own calendar)."""
    times = np.asarray(times)
    if times.dtype.kind == "M":  # pandas directly: much cheaper than the .dt accessor
        import pandas as pd

        idx = pd.DatetimeIndex(times.ravel())
        return {"year": np.asarray(idx.year), "month": np.asarray(idx.month),
                "day": np.asarray(idx.day), "hour": np.asarray(idx.hour),
                "minute": np.asarray(idx.minute), "dayofyear": np.asarray(idx.day_of_year),
                "days_in_year": np.where(idx.is_leap_year, 366, 365)}
    dt = xr.DataArray(times, dims="t").dt
    return {"year": dt.year.values, "month": dt.month.values, "day": dt.day.values,
            "hour": dt.hour.values, "minute": dt.minute.values,
            "dayofyear": dt.dayofyear.values, "days_in_year": dt.days_in_year.values}


def _diffs_ns(times: np.ndarray) -> np.ndarray:
    import pandas as pd

    d = np.diff(np.asarray(times))
    return np.asarray(pd.to_timedelta(d)).astype("m8[ns]").astype(np.int64)


def format_time(t: Any, compact: bool = False) -> str:
    """One time as ISO 8601 text, the same for numpy datetimes, pandas Timestamps, Python
    datetimes and cftime dates of any calendar: ``YYYY-MM-DDTHH:MM:SS``, with ``.ffffff``
    only when the microseconds are not zero. ``compact`` drops the separators
    (``YYYYMMDDTHHMMSS``, for file names). Anything that is not a time is written with ``str``.

    This text is part of the noise keys of ensembles (:mod:`xearthformer.models.keys`): do not
    change it.

    Examples
    --------
    >>> format_time(np.datetime64("2009-01-16T12:00"))
    '2009-01-16T12:00:00'
    >>> format_time(np.datetime64("2009-01-16T12:00"), compact=True)
    '20090116T120000'
    """
    if isinstance(t, np.datetime64):
        if np.isnat(t):
            return "NaT"
        import pandas as pd

        t = pd.Timestamp(t)
    fields = ("year", "month", "day", "hour", "minute", "second")
    if not all(hasattr(t, f) for f in fields):
        return str(t)
    text = "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}".format(*(int(getattr(t, f)) for f in fields))
    micro = int(getattr(t, "microsecond", 0) or 0)
    if micro:
        text += f".{micro:06d}"
    return text.replace("-", "").replace(":", "") if compact else text


def infer_step(times: Any) -> TimeStep:
    """The regular step of a time coordinate (datetime64 or cftime values).

    Calendar months/years are recognised (month lengths vary); otherwise every difference
    must be equal.

    Raises
    ------
    DataError
        Fewer than two times, non-monotonic or irregular steps (the message shows where).

    Examples
    --------
    >>> infer_step(np.array(["2000-01-16", "2000-02-15", "2000-03-16"], "M8[s]"))
    TimeStep(n=1, unit='months')
    """
    times = np.asarray(times)
    if times.dtype.kind != "M" and not (times.dtype.kind == "O" and times.size
                                        and hasattr(times.flat[0], "calendar")):
        from .validation import check_time_index

        check_time_index(times)  # time-zone aware stamps: say so, not "not dates"
        raise DataError(
            f"time values are not dates (dtype {times.dtype}). Fix: decode them, e.g. "
            "xr.decode_cf(ds), or give the time variable CF units such as 'days since 2000-01-01'."
        )
    if times.size < 2:
        raise DataError(
            f"need at least two time steps to find the time step, found {times.size}. "
            "Fix: pass a longer record."
        )
    d = _diffs_ns(times)
    if (d <= 0).any():
        i = int(np.argmax(d <= 0))
        raise DataError(
            f"time is not increasing: step {i} goes from {format_time(times[i])} to {format_time(times[i + 1])}. "
            "Fix: sort by time and drop duplicates (ds.sortby('time').drop_duplicates('time'))."
        )
    dm = None
    if (d >= 28 * _UNIT_NS["days"]).all():  # maybe calendar months (lengths vary)
        parts = time_parts(times)
        dm = np.diff(parts["year"] * 12 + parts["month"])
        if (dm == dm[0]).all() and dm[0] >= 1:
            k = int(dm[0])
            return TimeStep(k // 12, "years") if k % 12 == 0 else TimeStep(k, "months")
    if (d == d[0]).all():
        for unit in FIXED_UNITS:
            if d[0] % _UNIT_NS[unit] == 0:
                return TimeStep(int(d[0] // _UNIT_NS[unit]), unit)
        raise DataError(f"time step of {d[0]} ns is below one second; not supported.")
    raise DataError(_irregular(times, d, dm))


def _modal(values: np.ndarray) -> tuple[int, int]:
    """The most common value and how often it occurs."""
    uniq, counts = np.unique(values, return_counts=True)
    k = int(np.argmax(counts))
    return int(uniq[k]), int(counts[k])


_PANDAS_FREQ = {"days": "D", "hours": "h", "minutes": "min", "seconds": "s"}


def _fixed_parts(ns: int) -> tuple[int, str]:
    """A fixed step in ns as (count, largest unit that divides it); ns below a second as ns."""
    for unit in FIXED_UNITS:
        if ns % _UNIT_NS[unit] == 0:
            return ns // _UNIT_NS[unit], unit
    return ns, "ns"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit[:-1] if abs(n) == 1 and unit.endswith('s') else unit}"


def _irregular(times: np.ndarray, d: np.ndarray, dm: np.ndarray | None) -> str:
    """The message for irregular steps: the usual step and the first place that breaks it
    (a gap, a doubled or a shifted time), with the fix."""
    step_ns, count = _modal(d)
    if dm is not None and _modal(dm)[1] >= count and _modal(dm)[0] >= 1:
        k, count = _modal(dm)
        i = int(np.argmax(dm != k))
        usual, odd, freq = _plural(k, "months"), _plural(int(dm[i]), "months"), f"{k}MS"
    else:
        i = int(np.argmax(d != step_ns))
        n, unit = _fixed_parts(step_ns)
        usual, odd = _plural(n, unit), _plural(*_fixed_parts(int(d[i])))
        freq = f"{n}{_PANDAS_FREQ.get(unit, 'ns')}"
    return (
        f"time steps are irregular: the step is {usual} at {count} of {d.size} places, but "
        f"{format_time(times[i])} -> {format_time(times[i + 1])} is {odd}. Fix: make the step regular "
        f"by inserting the missing times as NaN (e.g. ds.resample(time={freq!r}).mean(); training "
        "skips windows without data), or select a regular part of the record."
    )


def add_steps(times: Any, step: TimeStep, k: int) -> np.ndarray:
    """``times`` shifted by ``k`` steps in their own calendar (cftime stays cftime).

    Calendar steps keep the day of month, clipped to the target month's length.

    Examples
    --------
    >>> add_steps(np.array(["2001-01-31"], "M8[s]"), TimeStep(1, "months"), 1)
    array(['2001-02-28T00:00:00'], dtype='datetime64[s]')
    """
    times = np.asarray(times)
    if not step.is_calendar:
        delta = step.to_timedelta() * int(k)
        if times.dtype.kind == "M":
            return (times + delta).astype(times.dtype)
        import datetime

        py = datetime.timedelta(microseconds=int(delta.astype("m8[us]").astype(np.int64)))
        return np.array([t + py for t in times.ravel()], dtype=object).reshape(times.shape)
    months = int(k) * step.n * (12 if step.unit == "years" else 1)
    if times.dtype.kind == "M":
        import pandas as pd

        shifted = pd.DatetimeIndex(times.ravel()) + pd.DateOffset(months=months)
        return np.asarray(shifted).astype(times.dtype).reshape(times.shape)
    return np.array([_add_months_cftime(t, months) for t in times.ravel()],
                    dtype=object).reshape(times.shape)


def _add_months_cftime(t: Any, months: int) -> Any:
    import cftime

    years, month0 = divmod(t.month - 1 + months, 12)
    year, month = t.year + years, month0 + 1
    days = cftime.datetime(year, month, 1, calendar=t.calendar,
                           has_year_zero=t.has_year_zero).daysinmonth
    return t.replace(year=year, month=month, day=min(t.day, days))


def lead_steps(lead: int | Sequence[int]) -> np.ndarray:
    if isinstance(lead, (int, np.integer)):
        if lead < 1:
            raise ConfigError(f"lead must be >= 1, got {lead}.")
        return np.arange(1, int(lead) + 1)
    steps = np.asarray(lead, dtype=np.int64)
    if steps.ndim != 1 or steps.size == 0 or (steps < 1).any():
        raise ConfigError(f"leads must be a non-empty list of step counts >= 1, got {lead!r}.")
    return steps


def time_coords(init_times: Any, step: TimeStep, lead: int | Sequence[int]
                ) -> dict[str, xr.DataArray]:
    """``init_time``, ``lead_time`` and 2-D ``valid_time`` coordinates of a forecast.

    The one place that builds forecast time coordinates (FORECAST, TRAIN and METRICS reuse
    it). Leads are step counts 1..L (an int L) or an explicit sequence of step counts.

    Parameters
    ----------
    init_times : array-like
        datetime64 or cftime values.
    step : TimeStep
    lead : int or sequence of int

    Returns
    -------
    dict
        ``{"init_time": (init_time,), "lead_time": (lead_time,),
        "valid_time": (init_time, lead_time)}``. lead_time is ``timedelta64[ns]`` for fixed
        steps, integers with ``attrs["units"]`` "months"/"years" for calendar steps.
        valid_time is in the init times' own calendar (cftime objects stay cftime).

    Examples
    --------
    >>> c = time_coords(np.array(["2000-01-01"], "M8[ns]"), TimeStep(1, "months"), 3)
    >>> c["valid_time"].values[0, -1]
    np.datetime64('2000-04-01T00:00:00.000000000')
    """
    init = np.atleast_1d(np.asarray(init_times))
    steps = lead_steps(lead)
    valid = np.stack([add_steps(init, step, int(s)) for s in steps], axis=1) if init.size else \
        np.empty((0, steps.size), dtype=init.dtype)
    if step.is_calendar:
        lead_values = steps * step.n
        lead_attrs = {"units": step.unit}
    else:
        lead_values = steps * step.to_timedelta()
        lead_attrs = {}
    return {
        "init_time": xr.DataArray(init, dims="init_time"),
        "lead_time": xr.DataArray(lead_values, dims="lead_time", attrs=lead_attrs),
        "valid_time": xr.DataArray(valid, dims=("init_time", "lead_time")),
    }
