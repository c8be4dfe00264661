"""F1 (one cluster) development run: where the start-up time goes, and variants, interleaved."""
import sys, os, json, time, tempfile, traceback
from pathlib import Path
sys.path.insert(0, os.environ.get("LIB", "lib"))
import numpy as np, torch
from fastcifar.core import bench, graphs, env
from fastcifar.core.kernels import pack, reference, megakernel
from fastcifar.core.kernels.samples import random_fastnet

dev = torch.device("cuda")
out = Path(os.environ.get("OUT", "/tmp"))
ORIG = megakernel.SOURCE.read_text()
EDITS = {
    "base": [],
    "wait_first": [("  mbar_wait(bar_addr(smem, 0));\n  stamp(stamps, rank, 1);",
                    "  mbar_wait(bar_addr(smem, 0));\n  mbar_wait(bar_addr(smem, 1));\n  stamp(stamps, rank, 1);")],
    "no_whiten": [("  whiten_band<C1>(smem, rank);\n", "")],
}
extra = os.environ.get("EXTRA_VARIANTS")
ALL = {
    "base": ("base", {}),
    "wait_first": ("wait_first", {}),
    "bg1": ("base", {"band_groups": 1}),
    "t512": ("base", {"threads": 512}),
    "bg1_t512": ("base", {"band_groups": 1, "threads": 512}),
}
VARIANTS = [(n,) + ALL[n] for n in os.environ.get("VARIANTS", "base,bg1,t512,bg1_t512").split(",")]
if extra:
    VARIANTS += json.loads(Path(extra).read_text())

def with_source(edit):
    text = ORIG
    for a, b in EDITS.get(edit, []):
        assert a in text, (edit, a)
        text = text.replace(a, b)
    f = Path(tempfile.mkdtemp()) / "megakernel.cu"
    f.write_text(text)
    megakernel.SOURCE = f

def rel(a, b): return ((a - b).abs().max() / b.abs().max()).item()

TAG = os.environ.get('TAG', 'new')
for MIRROR in (False, True):
    model = random_fastnet((32, 64, 128), 2).to(dev)
    packed = pack(model, mirror=MIRROR, device=dev)
    xs = torch.randn(8, 3, 32, 32, device=dev)
    want = [reference(packed, xs[i:i + 1]) for i in range(8)]
    report = {"env": env.environment_report(dev), "commit": env.git_commit(), "variants": {}}
    kernels = {}
    for name, edit, opts in VARIANTS:
        try:
            with_source(edit)
            k = megakernel.build_kernel(packed, **opts)
            kt = megakernel.build_kernel(packed, timing=True, **opts)
            errs = []
            for i in range(8):
                x = xs[i:i + 1].half().contiguous()
                errs.append(rel(k.launch(x).clone(), want[i]))
            torch.cuda.synchronize()
            layers = megakernel.layer_times(kt, xs[:1].half().contiguous(), 300)
            fn = lambda x, k=k: k.launch(x)
            replay = graphs.capture(fn, xs[:1].half().contiguous())
            kernels[name] = replay
            report["variants"][name] = {"opts": opts, "edit": edit, "max_rel_err": max(errs), "layers": layers,
                                        "resources": k.resources, "runs": []}
            print(name, "err", round(max(errs), 5), "head done", layers[-1]["at_us"],
                  " ".join(f"{r['step_us']:.2f}" for r in layers), flush=True)
        except Exception:
            traceback.print_exc()
    floors = []
    for rnd in range(3):
        fl = bench.launch_floor(dev, 200, 2000)[bench.FLOOR_GRAPH]
        floors.append((fl.host.p50, fl.host.p95))
        for name, replay in kernels.items():
            r = bench.benchmark_latency(replay, replay.static_input, 300, 3000)
            report["variants"][name]["runs"].append((r.host.p50, r.host.p95, r.gpu.p50))
    report["floor"] = floors
    print(TAG, "mirror", MIRROR, "floor p50/p95 ms per run", floors)
    print(f"{'variant':12s} {'err':>8s} {'inside us':>9s} {'p50 us':>7s} {'p95 us':>7s} {'gpu p50':>7s}")
    for name, v in report["variants"].items():
        if not v["runs"]: continue
        r = np.array(v["runs"]) * 1000
        print(f"{name:12s} {v['max_rel_err']:8.5f} {v['layers'][-1]['at_us']:9.2f} {np.median(r[:,0]):7.2f} {np.median(r[:,1]):7.2f} {np.median(r[:,2]):7.2f}")
    (out / f"f1_dev_{TAG}_{MIRROR}.json").write_text(json.dumps(report, indent=1, default=str))
