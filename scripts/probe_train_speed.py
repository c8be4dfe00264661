"""One-off probe (GPU): training speed of the light models with and without channels_last and bf16, the
overfit check's cost, and a few inference Specs. Its log is outputs/logs/probe_train_speed.log (it ran
with the package's earlier flat layout; the imports below name today's modules).

    OUT=DIR python scripts/probe_train_speed.py     # from the project root; writes DIR/probe.log
"""
import time, torch, sys, os, logging
sys.path.insert(0, "lib")
from fastcifar.core import env, data, models, optimize, engine as train
out = open(os.path.join(os.environ["OUT"], "probe.log"), "w")
def log(*a):
    print(*a, flush=True); print(*a, file=out, flush=True)
run = env.start("probe", "full")
cifar = data.load_cifar("cifar10", run.data_dir)
splits = data.make_splits(cifar, train_limit=10240)
dev = run.device
val = (data.to_tensor(splits.val.images, dev, splits.mean, splits.std), torch.as_tensor(splits.val.labels, device=dev))
def timed(name, fn):
    torch.cuda.synchronize(); t0 = time.perf_counter(); r = fn(); torch.cuda.synchronize()
    log(f"{name}: {time.perf_counter() - t0:.2f} s"); return r
for name in ("mobilenet_v3_small", "shufflenet_v2", "resnet18"):
    for cl in ((True, False) if name != "resnet18" else (True,)):
        for bf16 in ((True, False) if name != "resnet18" else (True,)):
            cfg = train.TrainConfig(epochs=2, channels_last=cl, bf16=bf16, checkpoint_every=100)
            r = timed(f"fit {name} cl={cl} bf16={bf16}", lambda: train.fit(models.build_model(name), splits, cfg, "p", name, "/tmp/probe", dev, resume=False, progress=False))
            log(f"   epoch seconds {[round(s, 2) for s in r.history.seconds]} on {len(splits.train)} images -> img/s {[round(v) for v in r.history.images_per_s]}")
m = models.build_model("mobilenet_v3_small").to(dev)
timed("overfit 150 steps", lambda: train.overfit_batch(m, val[0][:64], val[1][:64], steps=150))
for spec in (optimize.Spec(), optimize.Spec("fp16", cuda_graph=True), optimize.Spec("fp16", fold_bn=True, compile_mode="default", cuda_graph=True), optimize.Spec("fp16", compile_mode="reduce-overhead")):
    df, _ = timed(f"sweep {spec.label}", lambda: optimize.sweep(m, "mobilenet_v3_small", {"a": spec}, val, val, 100, 1000, {}))
    log(f"   compile_s {df.compile_s.iloc[0]} p95 {df.lat_p95_ms.iloc[0]:.4f} gpu_mean {df.gpu_mean_ms.iloc[0]:.4f} notes {df.notes.iloc[0]}")
log("done")
