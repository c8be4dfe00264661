import sys, time, json, os, dataclasses
sys.path.insert(0, "lib")
import numpy as np, torch
from fastcifar.core.kernels import pack, grid, megakernel, reference
from fastcifar.core.kernels.samples import random_fastnet
dev = torch.device("cuda"); out = os.environ.get("OUT", "/tmp")
def rel(a, b): return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
def timeit(fn, n=3000):
    s = torch.cuda.current_stream()
    for _ in range(300): fn(); s.synchronize()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); s.synchronize(); ts.append(time.perf_counter() - t0)
    ts = np.array(ts) * 1e6
    return round(float(np.percentile(ts, 50)), 2), round(float(np.percentile(ts, 95)), 2)
orig = grid.plan
model = random_fastnet((128, 512, 512), 3).to(dev)
packed = pack(model, mirror=True, device=dev)
xs = torch.randn(10, 3, 32, 32, device=dev)
report = {}
for unroll in (2, 4):
    grid.plan = lambda *a, **k: dataclasses.replace(orig(*a, **k), k_unroll=unroll)
    for timing in (False, True):
        k = grid.build_kernel(packed, timing=timing)
        errs = [rel(k.launch(xs[i:i+1].half().contiguous()).clone(), reference(packed, xs[i:i+1])) for i in range(10)]
        if timing:
            rows = megakernel.layer_times(k, xs[:1].half().contiguous(), 200)
            report[f"layers_unroll{unroll}"] = rows
            print("unroll", unroll, "err", max(errs), "regs", k.resources["registers"])
            for i in range(1, len(rows) - 1, 5):
                print("  ", rows[i]["stamp"].split()[0], [round(r["step_us"], 2) for r in rows[i:i + 5]])
            print("  ", rows[-1])
        else:
            x = xs[:1].half().contiguous()
            g = torch.cuda.CUDAGraph(); s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                k.launch(x); torch.cuda.synchronize()
                with torch.cuda.graph(g, stream=s):
                    k.launch(x)
            t = timeit(g.replay)
            report[f"graph_unroll{unroll}"] = dict(err=max(errs), p50_p95=t)
            print("unroll", unroll, "err", max(errs), "graph p50/p95", t)
json.dump(report, open(os.path.join(out, "grid_dev3.json"), "w"), indent=1, default=str)
