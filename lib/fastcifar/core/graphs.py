"""One CUDA-graph capture for every graphed path (variants, the launch floor, the kernel benchmark).

The call path is the lean one the series measures: the graph is launched with the runtime's
cudaGraphLaunch on torch's current stream (through cuda-python's `cuda.bindings`, about a microsecond
less host work per call than `CUDAGraph.replay()`; replay is the fallback where cuda-bindings is
missing), the caller then waits for that stream (see bench). The input is copied into the graph's
static buffer only when the caller passes another tensor: a caller that prepares its input in
`replay.static_input` (optimize.Variant.prepare does) pays no copy per call. The output is the
graph's own buffer, overwritten by the next call: clone what you keep.
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


def capture(fn: Callable, example: torch.Tensor, warmup: int = 3) -> Callable:
    """Record one call of `fn` at the example's shape (after `warmup` calls on a side stream, which
    pick kernels and allocate workspaces outside the capture) and return `replay(x)`: x into the
    static input unless it is that buffer, one graph launch, the static output."""
    if example.device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")
    device = example.device
    static_in = example.clone()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(static_in)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = fn(static_in)
    launch = _launcher(graph, device)

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
