"""``compile=True`` (torch.compile, inductor) against eager on the CPU: compile seconds and step time.

Per (case, mode), in a fresh subprocess with an empty inductor cache (so every compilation is
cold): the first call of the compiled model (compilation + one step), then ``--repeats`` steps
of the eager and the compiled model (same weights), interleaved; ``fwd`` and ``train`` as in
``bench_model.py``. Compile seconds = first compiled call - median compiled step. A benchmark,
not a test::

    python benchmarks/bench_compile.py --threads 1 --cases enso-b1,enso-b8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def measure(case_name: str, mode: str, repeats: int) -> dict[str, object]:
    import torch

    import bench_model as bm
    from xearthformer.device import compiled

    p, b = case_name.split("-b")
    case = bm.Case(p, int(b))
    x, y = bm.data(case, "cpu")
    eager = bm.step_fn(bm.build(case, "xef", "cpu"), mode, x, y)
    fast = bm.step_fn(compiled(bm.build(case, "xef", "cpu"), True), mode, x, y)
    t0 = time.perf_counter()
    fast()
    first = time.perf_counter() - t0
    eager()
    runs: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(repeats):
        for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            fn = eager if name == "eager" else fast
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"case": case_name, "mode": mode, "first_compiled_call_s": first,
            "compile_s": first - med["compiled"], "runs_s": runs,
            "eager_over_compiled": med["eager"] / med["compiled"], "torch": torch.__version__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default="enso-b1,enso-b8")
    p.add_argument("--modes", default="fwd,train")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", default=None)
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args._worker:
        print(json.dumps(measure(*json.loads(args._worker))))
        return 0
    started = time.gmtime()
    out = args.output or os.path.join(ROOT, "benchmarks", "results", time.strftime("bench_compile-%Y%m%dT%H%MZ.json", started))
    result = {"command": " ".join(["python", *sys.argv]), "threads": args.threads,
              "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", started), "load_start": os.getloadavg(), "runs": []}
    for case in args.cases.split(","):
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory() as cache:  # cold: no compiled artifacts from before
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_COMPILE_THREADS=str(args.threads))
                done = subprocess.run([sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
                                       "--_worker", json.dumps([case, mode, args.repeats])],
                                      capture_output=True, text=True, cwd=ROOT, env=env)
            if done.returncode:
                entry = {"case": case, "mode": mode, "error": done.stderr[-4000:]}
                print(f"{case} {mode}: FAILED\n{done.stderr[-4000:]}", flush=True)
            else:
                entry = json.loads(done.stdout.strip().splitlines()[-1])
                med = {k: statistics.median(v) for k, v in entry["runs_s"].items()}
                print(f"{case} {mode}: compile {entry['compile_s']:.1f} s; step eager {med['eager']:.3f} s, compiled "
                      f"{med['compiled']:.3f} s: eager/compiled {entry['eager_over_compiled']:.2f}", flush=True)
            entry["load_after"] = os.getloadavg()
            result["runs"].append(entry)
            with open(out, "w") as f:
                json.dump(result, f, indent=1)
    print(f"results in {os.path.relpath(out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
