"""One CUDA-graph capture for every graphed path (variants, the launch floor, the kernel benchmark).

The call path is the lean one the series measures: the graph is launched with the runtime's
cudaGraphLaunch on torch's current stream (through cuda-python's `cuda.bindings`, about a microsecond
less host work per call than `CUDAGraph.replay()`; replay is the fallback where cuda-bindings is
missing), the caller then waits for that stream (see bench). The input is copied into the graph's
static buffer only when the caller passes another tensor: a caller that prepares its input in
`replay.static_input` (optimize.Variant.prepare does) pays no copy per call. The output is the
graph's own buffer, overwritten by the next call: clone what you keep.

`record` is the capture itself, for a step that owns all its buffers (the predictor's graph: the upload
of a uint8 image from pinned host memory, the network, the read-back of its result; `copy_async` queues
those copies so that the graph holds them as copy nodes).
"""
from __future__ import annotations

from typing import Callable

import torch


class Unavailable(RuntimeError):
    """This path cannot run here (for instance a CUDA graph on a CPU)."""


def _launcher(graph: torch.cuda.CUDAGraph, device: torch.device) -> Callable[[], None]:
    """A function that launches the instantiated graph on the current stream of `device`."""
    try:
        from cuda.bindings import runtime
    except ImportError:  # pragma: no cover - torch's CUDA wheels bring cuda-bindings
        return graph.replay
    exec_handle = runtime.cudaGraphExec_t(init_value=graph.raw_cuda_graph_exec())
    raw_stream = torch._C._cuda_getCurrentRawStream
    index = device.index if device.index is not None else torch.cuda.current_device()

    def launch() -> None:
        (err,) = runtime.cudaGraphLaunch(exec_handle, runtime.cudaStream_t(init_value=raw_stream(index)))
        if err != runtime.cudaError_t.cudaSuccess:
            raise RuntimeError(f"cudaGraphLaunch failed: {err!r}")

    return launch


def waiter(device) -> Callable[[], None]:
    """A function that waits for the current stream of `device` (what a launch() ran on), through the
    runtime as `_launcher` launches: no stream object is built per call."""
    device = torch.device(device)
    try:
        from cuda.bindings import runtime
    except ImportError:  # pragma: no cover - torch's CUDA wheels bring cuda-bindings
        return lambda: torch.cuda.current_stream(device).synchronize()
    raw_stream = torch._C._cuda_getCurrentRawStream
    index = device.index if device.index is not None else torch.cuda.current_device()

    def wait() -> None:
        (err,) = runtime.cudaStreamSynchronize(runtime.cudaStream_t(init_value=raw_stream(index)))
        if err != runtime.cudaError_t.cudaSuccess:
            raise RuntimeError(f"cudaStreamSynchronize failed: {err!r}")

    return wait


def record(step: Callable[[], object], device, warmup: int = 3):
    """Record one call of `step` (no arguments: it reads and writes buffers it keeps alive itself) after
    `warmup` calls on a side stream, which pick kernels and allocate workspaces outside the capture.
    Returns (graph, what the recorded call returned, launch); launch() runs the graph on the current
    stream of `device` and returns at once (wait for that stream before reading what it wrote)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        out = step()
    return graph, out, _launcher(graph, device)


def capture(fn: Callable, example: torch.Tensor, warmup: int = 3) -> Callable:
    """Record one call of `fn` at the example's shape (see `record`) and return `replay(x)`: x into the
    static input unless it is that buffer, one graph launch, the static output."""
    if example.device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")
    static_in = example.clone()
    graph, static_out, launch = record(lambda: fn(static_in), example.device, warmup)

    def replay(x: torch.Tensor) -> torch.Tensor:
        if x.data_ptr() != static_in.data_ptr():
            static_in.copy_(x)
        launch()
        return static_out

    replay.graph = graph
    replay.static_input = static_in
    # The graph reads fn's buffers (weights, activations) by address: keep fn, and so everything its
    # closure holds, alive as long as the replay is; freed and reused memory would be read silently.
    replay.captured = fn
    return replay


def copy_async(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Queue a copy of `src` into `dst` (contiguous, the same number of bytes; one in pinned host memory,
    the other on the GPU) on the current stream with cudaMemcpyAsync, which a capture records as a copy
    node. Returns at once. (torch's non-blocking copy_ would also book the pinned block's use in its
    host allocator at every call, which a captured copy has no use for.)"""
    if not (dst.is_contiguous() and src.is_contiguous()):
        raise ValueError("copy_async copies contiguous tensors")
    nbytes = dst.numel() * dst.element_size()
    if nbytes != src.numel() * src.element_size():
        raise ValueError(f"copy_async: {src.numel() * src.element_size()} bytes into {nbytes}")
    gpu = dst.device if dst.device.type == "cuda" else src.device
    host = src if gpu == dst.device else dst
    if gpu.type != "cuda" or host.device.type != "cpu" or not host.is_pinned():
        raise ValueError("copy_async copies between pinned host memory and a CUDA device")
    try:
        from cuda.bindings import runtime
    except ImportError:  # pragma: no cover - torch's CUDA wheels bring cuda-bindings
        dst.copy_(src, non_blocking=True)
        return
    kind = (runtime.cudaMemcpyKind.cudaMemcpyHostToDevice if dst.device.type == "cuda"
            else runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost)
    index = gpu.index if gpu.index is not None else torch.cuda.current_device()
    stream = runtime.cudaStream_t(init_value=torch._C._cuda_getCurrentRawStream(index))
    (err,) = runtime.cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), nbytes, kind, stream)
    if err != runtime.cudaError_t.cudaSuccess:
        raise RuntimeError(f"cudaMemcpyAsync failed: {err!r}")
