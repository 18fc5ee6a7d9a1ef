"""Speed and peak memory of the xearthformer model versus the official Earthformer code.

Both implementations get identical weights (the official model loads xearthformer's
state_dict) and identical inputs. Per case it measures

* ``fwd``:   inference, ``model.eval()`` under ``torch.inference_mode()``;
* ``train``: one training step, ``model.train()`` (dropout on, as configured), MSE loss,
             backward, ``AdamW.step()``;

as the median wall time of ``--repeats`` runs after warm-up, the two implementations
interleaved run by run so that drifting load on a shared machine hits both alike; and the
peak memory of one step, each (case, implementation, mode) in a fresh subprocess: on CPU the
growth of ``ru_maxrss`` (the process's resident high-water mark) over the step, on CUDA
``torch.cuda.max_memory_allocated`` above what was allocated before the step.
The table shows the ratio xearthformer / official (< 1: xearthformer is faster/smaller);
with ``--baseline DIR`` the xearthformer package of another checkout is timed too, in
the same interleaved runs (before/after comparisons of a change).

The official package (``earthformer==0.2.1``) is a test oracle: this script imports it, the
``xearthformer`` package never does. ``tiny``/``small`` have no official counterpart and get
absolute numbers only. A benchmark, not a test::

    python benchmarks/bench_model.py                      # CPU, 1 thread, all cases
    python benchmarks/bench_model.py --quick              # enso batch 1 only, 3 repeats
    python benchmarks/bench_model.py --device cuda --repeats 20
    python benchmarks/bench_model.py --baseline ../xef-old   # + another checkout's xearthformer
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from xearthformer.models.earthformer.config import preset  # noqa: E402
from xearthformer.models.earthformer.network import Earthformer  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One benchmarked model size: preset, batch and an optional (T, H, W, C) input override."""

    preset: str
    batch: int
    input_shape: tuple[int, int, int, int] | None = None

    @property
    def label(self) -> str:
        shape = "x".join(map(str, self.input_shape[:3])) if self.input_shape else "native"
        return f"{self.preset} b{self.batch} {shape}"

    @property
    def has_official(self) -> bool:
        return self.preset in ("sevir", "enso")


def cases(quick: bool, device: str) -> list[Case]:
    """The benchmarked cases; SEVIR runs at 13x128x128 on CPU (full 384x384 is minutes per step)."""
    if quick:
        return [Case("enso", 1)]
    sevir = None if device == "cuda" else (13, 128, 128, 1)
    return [Case("enso", 1), Case("enso", 8), Case("sevir", 1, sevir), Case("tiny", 8), Case("small", 8)]


# ----------------------------------------------------------------------------- models

def _official_class():  # noqa: ANN202
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from earthformer.cuboid_transformer.cuboid_transformer import CuboidTransformerModel
    return CuboidTransformerModel


BASELINE_ENV = "XEF_BENCH_BASELINE"


def _baseline_package():  # noqa: ANN202
    """The ``xearthformer`` package of another checkout (``--baseline DIR``), as ``xef_baseline``."""
    import importlib.util

    init = os.path.join(os.environ[BASELINE_ENV], "xearthformer", "__init__.py")
    if "xef_baseline" not in sys.modules:
        spec = importlib.util.spec_from_file_location("xef_baseline", init,
                                                      submodule_search_locations=[os.path.dirname(init)])
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["xef_baseline"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["xef_baseline"]


def build(case: Case, impl: str, device: str) -> torch.nn.Module:
    """The model of ``case``, ``impl`` = "xef", "official" or "baseline", with the same seeded weights."""
    overrides = {"input_shape": case.input_shape} if case.input_shape else {}
    cfg = preset(case.preset, **overrides)
    torch.manual_seed(0)
    ours = Earthformer(cfg)
    if impl == "xef":
        return ours.to(device)
    if impl == "baseline":
        import importlib

        _baseline_package()
        try:
            earthformer = importlib.import_module("xef_baseline.models.earthformer.network")
        except ModuleNotFoundError:  # a checkout from before the models/ package
            earthformer = importlib.import_module("xef_baseline.nn.earthformer")
        model = earthformer.Earthformer(earthformer.EarthformerConfig.from_dict(cfg.to_dict()))
        model.load_state_dict(ours.state_dict())
        return model.to(device)
    from tests.test_official import official_kwargs  # the one translation config -> official kwargs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = _official_class()(**official_kwargs(cfg.to_dict()))
    official.load_state_dict(ours.state_dict())
    return official.to(device)


def data(case: Case, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = preset(case.preset, **({"input_shape": case.input_shape} if case.input_shape else {}))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, *cfg.input_shape, generator=gen)
    y = torch.randn(case.batch, *cfg.target_shape, generator=gen)
    return x.to(device), y.to(device)


def step_fn(model: torch.nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN201
    """A zero-argument callable running one inference (``fwd``) or training (``train``) step."""
    if mode == "fwd":
        model.eval()

        def fwd() -> None:
            with torch.inference_mode():
                model(x)
        return fwd
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return train


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- measurements

def time_case(case: Case, mode: str, repeats: int, warmup: int, device: str) -> dict[str, float]:
    """Median seconds per step of each implementation, runs interleaved (xef, official, official, xef, ...)."""
    x, y = data(case, device)
    impls = ["xef", "official"] if case.has_official else ["xef"]
    if os.environ.get(BASELINE_ENV):
        impls.append("baseline")
    steps = {impl: step_fn(build(case, impl, device), mode, x, y) for impl in impls}
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    runs: dict[str, list[float]] = {impl: [] for impl in impls}
    for r in range(repeats):
        order = impls[r % len(impls):] + impls[:r % len(impls)]  # rotate: no implementation always first
        for impl in order:
            fn = steps[impl]
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            runs[impl].append(time.perf_counter() - t0)
    return {impl: statistics.median(ts) for impl, ts in runs.items()}


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux: VmHWM); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_here(case: Case, impl: str, mode: str, device: str) -> int:
    """Peak bytes of one step beyond what the model, optimizer state and inputs hold.

    For ``train`` one step runs first, so the AdamW state exists before measuring. On CPU
    the subprocess runs with a fixed glibc mmap threshold, so freed tensors go back to the
    OS and the resident size before the step is what the process really holds; the peak is
    VmHWM after resetting it (Linux), else the growth of ``ru_maxrss``.
    """
    x, y = data(case, device)
    fn = step_fn(build(case, impl, device), mode, x, y)
    if mode == "train":
        fn()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated() - before
    if _reset_peak_rss():
        before = _status_bytes("VmRSS")
        fn()
        return _status_bytes("VmHWM") - before
    before = _maxrss_bytes()
    fn()
    return _maxrss_bytes() - before


def _worker(task: str, case: Case, *args: object, device: str, threads: int) -> object:
    """Run ``task`` ("time" or "memory") for ``case`` in a fresh subprocess; its JSON result.

    A fresh process per measurement: ``ru_maxrss`` never goes down, and the official code
    caches masks created under ``inference_mode`` that a later training step in the same
    process cannot use.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps([task, asdict(case), *args]),
           "--device", device, "--threads", str(threads)]
    env = dict(os.environ)
    if task == "memory":  # large frees return memory to the OS (slows the steps: never when timing)
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        sys.exit(f"{task} worker for {case.label} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_worker(spec: str, device: str) -> object:
    task, case_dict, *args = json.loads(spec)
    case = Case(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in case_dict.items()})
    if task == "time":
        return time_case(case, *args, device=device)  # type: ignore[arg-type]
    return peak_memory_here(case, *args, device=device)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- report

def machine(device: str, threads: int) -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU {cpu}, nproc {os.cpu_count()}{gpu}; "
            f"torch {torch.__version__}, {threads} thread(s); load average {load}")


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}" if b else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 7, --quick 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per case first (default 2)")
    p.add_argument("--quick", action="store_true", help="enso batch 1 only, 3 repeats")
    p.add_argument("--modes", default="fwd,train", help="comma-separated subset of fwd,train")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--baseline", metavar="DIR", help="also time the xearthformer of another checkout "
                   "(e.g. a `git worktree` of an older commit), with the same weights")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._worker:
        print(json.dumps(_run_worker(args._worker, args.device)))
        return 0
    repeats = args.repeats or (3 if args.quick else 7)
    modes = [m for m in args.modes.split(",") if m]
    print(machine(args.device, args.threads))
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    base = bool(args.baseline)
    if base:
        os.environ[BASELINE_ENV] = os.path.abspath(args.baseline)  # read by the workers
    header = "| case | mode | xef s | official s | xef/official |" + (" baseline s | xef/baseline |" if base else "")
    header += " xef peak MiB | official peak MiB | xef/official |"
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|", flush=True)

    def cell(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for case in cases(args.quick, args.device):
        for mode in modes:
            t = _worker("time", case, mode, repeats, args.warmup, device=args.device, threads=args.threads)
            mem: dict[str, float] = {}
            if not args.no_memory:
                for impl in ("xef", "official") if case.has_official else ("xef",):
                    mem[impl] = _worker("memory", case, impl, mode, device=args.device, threads=args.threads) / 2**20
            row = f"| {case.label} | {mode} | {t['xef']:.3f} | {cell(t.get('official'), '.3f')} | " \
                  f"{_ratio(t['xef'], t.get('official'))} |"
            if base:
                row += f" {cell(t.get('baseline'), '.3f')} | {_ratio(t['xef'], t.get('baseline'))} |"
            row += f" {cell(mem.get('xef'), '.0f')} | {cell(mem.get('official'), '.0f')} | " \
                   f"{_ratio(mem['xef'], mem.get('official')) if mem else '-'} |"
            print(row, flush=True)
    print(f"(medians of {repeats} interleaved runs after {args.warmup} warm-up runs; load average now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
