import sys, time, json, os
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
report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
for name, widths, convs, mirror in [("F2", (128, 512, 512), 3, True), ("F1", (32, 64, 128), 2, False), ("w64", (64, 256, 256), 3, True)]:
    model = random_fastnet(widths, convs).to(dev)
    packed = pack(model, mirror=mirror, device=dev)
    xs = torch.randn(20, 3, 32, 32, device=dev)
    for reorder in ((False, True) if name == "F2" else (True,)):
        for timing in ((False, True) if name == "F2" else (False,)):
            k = grid.build_kernel(packed, timing=timing, reorder=reorder)
            errs = [rel(k.launch(xs[i:i+1].half().contiguous()).clone(), reference(packed, xs[i:i+1])) for i in range(20)]
            key = f"{name} reorder={reorder}"
            if timing:
                rows = megakernel.layer_times(k, xs[:1].half().contiguous(), 200)
                report[key + " layers"] = rows
                print(key, "timing build err", max(errs))
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
                g.replay(); torch.cuda.synchronize(); base = k.logits.clone()
                for _ in range(1000): g.replay()
                torch.cuda.synchronize(); same = torch.equal(base, k.logits)
                t = timeit(g.replay) if name == "F2" else None
                report[key] = dict(err=max(errs), p50_p95=t, identical_after_1000=same, regs=k.resources["registers"])
                print(key, "err", max(errs), "graph p50/p95", t, "identical", same)
json.dump(report, open(os.path.join(out, "grid_dev4.json"), "w"), indent=1, default=str)
