"""Speed, peak memory and FLOP rate of the xearthformer model versus the official Earthformer code.

Both implementations get identical weights (the official model loads xearthformer's
state_dict) and identical inputs. Per case it measures

* ``fwd``:   inference, ``model.eval()`` under ``torch.inference_mode()``;
* ``train``: one training step, ``model.train()`` (dropout on, as configured), MSE loss,
             backward, ``AdamW.step()``;

as the median (and best) wall time of ``--repeats`` runs after warm-up, the implementations
interleaved run by run (rotated order) so that drifting load on a shared machine hits all
alike; and the peak memory of one step, each (case, implementation, mode) in a fresh
subprocess: on CPU the growth of the resident high-water mark over the step, on CUDA
``torch.cuda.max_memory_allocated`` above what was allocated before the step.

Implementations ("settings"): ``official`` (its preset settings); ``xef`` (defaults);
``xef-ckpt`` (activation checkpointing of every attention and FFN block, ``checkpoint_level``
2, train only); ``xef-ckpt3`` (also the stem and head, level 3, train only); ``xef-compile`` (``torch.compile``, inductor; opt-in, compiling takes minutes on
a CPU); ``baseline`` (``--baseline DIR``: the xearthformer of another checkout).
Ratios are official / ours (> 1: ours is faster or smaller).

FLOPs are counted once per case with :class:`torch.utils.flop_counter.FlopCounterMode` on the
official model (so work that xearthformer skips counts for it), with a breakdown by top-level
module; achieved GFLOP/s = FLOPs / median time, beside this machine's fp32 matmul rate measured
in the same run (a 2048^3 ``torch.mm``, best of several, at the start and at the end).

The official package (``earthformer==0.2.1``) is a test oracle: this script imports it, the
``xearthformer`` package never does. ``small`` has no official counterpart and gets absolute
numbers only. Results go to ``benchmarks/results/bench_model-<UTC time>.json`` with the machine
(``lscpu`` model, cores, load average at start and end). A benchmark, not a test::

    python benchmarks/bench_model.py                      # CPU, 2 threads, all cases
    python benchmarks/bench_model.py --quick              # enso batch 1 only, < 2 min idle
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


CASES = ("enso-b8", "enso-b16", "sevir-b1", "sevir-b4", "small-b8")


def cases(quick: bool, device: str, names: str | None = None) -> list[Case]:
    """The benchmarked cases; SEVIR runs at 13x128x128 on CPU (full 384x384 is minutes per step)."""
    if quick:
        return [Case("enso", 1)]
    sevir = None if device == "cuda" else (13, 128, 128, 1)
    chosen = names.split(",") if names else list(CASES)
    out = []
    for name in chosen:
        p, b = name.split("-b")
        out.append(Case(p, int(b), sevir if p == "sevir" else None))
    return out


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
    if impl in ("xef-ckpt", "xef-ckpt3"):
        ours.set_activation_checkpointing(True, level=3 if impl == "xef-ckpt3" else 2)
        return ours.to(device)
    if impl == "xef-compile":
        return torch.compile(ours.to(device))
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

def time_case(case: Case, mode: str, repeats: int, warmup: int, impls: list[str],
              device: str) -> dict[str, list[float]]:
    """Seconds per step of each implementation, every run, interleaved in rotated order."""
    x, y = data(case, device)
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
    return runs


def count_flops(case: Case, mode: str, device: str) -> dict[str, object]:
    """FLOPs of one step of the official model (``fwd``: forward; ``train``: forward and
    backward, the optimizer not counted) and the forward FLOPs by top-level module (the
    counter attributes backward ops to modules unreliably, so the breakdown is the forward's)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = data(case, device)
    model = build(case, "official", device)
    model.train(mode == "train")
    forward = FlopCounterMode(model, depth=2, display=False)
    with forward:  # (not under no_grad: the counter's module tracker then fails on the SEVIR model)
        model(x)
    counts = forward.get_flop_counts()
    top = type(model).__name__
    by_module = {name.split(".", 1)[1]: int(sum(ops.values())) for name, ops in counts.items()
                 if name.count(".") == 1 and name.startswith(top)}
    total = forward.get_total_flops()
    if mode == "train":
        step = FlopCounterMode(display=False)
        with step:
            torch.nn.functional.mse_loss(model(x), y).backward()
        total = step.get_total_flops()
    return {"total": int(total), "forward": int(forward.get_total_flops()), "forward_by_module": by_module}


def matmul_rate(device: str, n: int = 2048, repeats: int = 7) -> float:
    """This machine's fp32 matmul rate in GFLOP/s: best of ``repeats`` (n x n) @ (n x n)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


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
    if task == "flops":
        return count_flops(case, *args, device=device)  # type: ignore[arg-type]
    if task == "matmul":
        return matmul_rate(device)
    return peak_memory_here(case, *args, device=device)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- report

def machine(device: str, threads: int) -> dict[str, object]:
    """The machine as the results record it: ``lscpu`` model name and cores, torch, load."""
    info: dict[str, object] = {"cpu": platform.processor() or "?", "nproc": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info.update(cpu=fields.get("Model name", info["cpu"]), cpus=fields.get("CPU(s)"),
                    cores_per_socket=fields.get("Core(s) per socket"), sockets=fields.get("Socket(s)"),
                    hypervisor=fields.get("Hypervisor vendor"))
    except (OSError, subprocess.CalledProcessError):
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    info.update(torch=torch.__version__, threads=threads, device=device)
    return info


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, this machine's cores)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 5, --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per case first (default 2, --quick 1)")
    p.add_argument("--quick", action="store_true", help="enso batch 1 only, 3 repeats (under 2 minutes idle)")
    p.add_argument("--cases", default=None, help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--modes", default="fwd,train", help="comma-separated subset of fwd,train")
    p.add_argument("--settings", default="xef,xef-ckpt", help="our settings to run: xef, xef-ckpt, xef-ckpt3 (train "
                   "only), xef-compile (default xef,xef-ckpt)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    p.add_argument("--baseline", metavar="DIR", help="also time the xearthformer of another checkout "
                   "(e.g. a `git worktree` of an older commit), with the same weights")
    p.add_argument("--output", default=None, help="results JSON (default benchmarks/results/bench_model-<time>.json)")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._worker:
        print(json.dumps(_run_worker(args._worker, args.device)))
        return 0
    started = time.time()
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    modes = [m for m in args.modes.split(",") if m]
    settings = [s for s in args.settings.split(",") if s]
    if args.baseline:
        os.environ[BASELINE_ENV] = os.path.abspath(args.baseline)  # read by the workers
        settings.append("baseline")
    result: dict[str, object] = {
        "machine": machine(args.device, args.threads), "command": " ".join(["python", *sys.argv]),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)), "load_start": _load(),
        "repeats": repeats, "warmup": warmup, "matmul_gflops": [], "cases": []}
    work = lambda task, case, *a: _worker(task, case, *a, device=args.device, threads=args.threads)  # noqa: E731
    out = args.output or os.path.join(ROOT, "benchmarks", "results",
                                      time.strftime("bench_model-%Y%m%dT%H%MZ.json", time.gmtime(started)))
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def save() -> None:  # after every case: an interrupted run keeps what it measured
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    rate = work("matmul", Case("enso", 1))
    result["matmul_gflops"].append(rate)  # type: ignore[union-attr]
    print(f"{result['machine']}\nload average {result['load_start']}; fp32 matmul {rate:.1f} GFLOP/s")
    print("| case | mode | setting | median s | best s | official/ours (median, best) | GFLOP/s | "
          "of matmul | peak MiB | official/ours peak |\n" + "|---" * 10 + "|", flush=True)
    for case in cases(args.quick, args.device, args.cases):
        for mode in modes:
            ours = [s for s in settings if not (s.startswith("xef-ckpt") and mode == "fwd")]
            impls = ours + (["official"] if case.has_official else [])
            runs = work("time", case, mode, repeats, warmup, impls)
            flops = None if args.no_flops or not case.has_official else work("flops", case, mode)
            mem = {} if args.no_memory else {impl: work("memory", case, impl, mode) for impl in impls
                                             if impl != "xef-compile"}
            entry = {"case": case.label, "preset": case.preset, "batch": case.batch,
                     "input_shape": case.input_shape, "mode": mode, "runs_s": runs, "flops": flops,
                     "peak_bytes": mem, "load_after": _load()}
            result["cases"].append(entry)  # type: ignore[union-attr]
            save()
            med = {k: statistics.median(v) for k, v in runs.items()}
            best = {k: min(v) for k, v in runs.items()}
            for impl in impls:
                # (train: forward + backward FLOPs over the whole step's time, AdamW included)
                gf = flops["total"] / med[impl] / 1e9 if flops else None
                ratio = "-" if impl == "official" or "official" not in med else \
                    f"{med['official'] / med[impl]:.2f}, {best['official'] / best[impl]:.2f}"
                peak = mem.get(impl)
                print(f"| {case.label} | {mode} | {impl} | {med[impl]:.3f} | {best[impl]:.3f} | {ratio} | "
                      f"{'-' if gf is None else f'{gf:.1f}'} | {'-' if gf is None else f'{gf / rate:.0%}'} | "
                      f"{'-' if peak is None else f'{peak / 2**20:.0f}'} | "
                      f"{'-' if impl == 'official' else _ratio(mem.get('official'), peak)} |", flush=True)
            if flops:
                shares = sorted(flops["forward_by_module"].items(), key=lambda kv: -kv[1])
                print(f"|  | FLOPs | {flops['total'] / 1e9:.1f} G; forward by module: " + ", ".join(
                    f"{k} {v / flops['forward']:.0%}" for k, v in shares if v >= 0.005 * flops["forward"])
                    + " |  |  |  |  |  |  |  |", flush=True)
    rate_end = work("matmul", Case("enso", 1))
    result["matmul_gflops"].append(rate_end)  # type: ignore[union-attr]
    result["load_end"] = _load()
    result["wall_s"] = round(time.time() - started, 1)
    save()
    print(f"(medians and best of {repeats} interleaved runs after {warmup} warm-up runs; fp32 matmul at the end "
          f"{rate_end:.1f} GFLOP/s; load average at the end {result['load_end']}; {result['wall_s']} s; "
          f"results in {os.path.relpath(out, ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
