"""
One training micro-step (forward + backward) captured in a CUDA graph and replayed.

Why: the int8 step is many small kernels queued from Python (GPT-2 small: ~700 launches a step,
~900 with fallback), and queueing them takes the host 40-90 ms against 43-47 ms of GPU work on
an H100 (notes/profile_model.log): the int8 runs were bound by the CPU. A replay queues the whole
micro-step with one call.

What a replay needs that the eager step does not:
  - static inputs: each batch is copied into the buffers the graph was captured with;
  - fresh stochastic rounding: the kernels' seeds are drawn on the host and frozen into the
    graph as launch arguments, so the captured step first redraws quantize_cuda.sr_salt from
    torch's CUDA generator (which replays advance), and every SR kernel XORs it into its seed;
  - fixed fallback planes: each call site's plane capacity is what its budget gave at capture.
    After a step, FallbackConfig.read_captured() reads the replayed flag counts (one sync); if
    one outgrew its capacity, those blocks stayed plain int8 for that step (as in an eager step
    that overflows) and the next micro-step re-captures with the grown budgets;
  - gradients that exist: backward adds into each .grad in place, so the graph captures those
    adds, and the optimizer must zero the gradients in place (zero_grad(set_to_none=False));
  - the fallback statistics of the captured forward: an eager forward in between (evaluation)
    replaces them, so each replay puts the captured ones back.

The optimizer step, gradient clipping, evaluation and checkpoints stay eager. Not with DDP or
torch.compile (train.py turns the graph off for both).
"""
import torch

from quantize_cuda import refresh_sr_salt


def capture_step(step, device, side, between=None):
    """torch's recipe for capturing a training step: step() runs once eagerly on the `side`
    stream (lazy initialisation happens outside the capture, and every gradient it adds into
    exists), then between() (host reads, which a capture forbids), then step() is captured on the
    same stream (which runs nothing). Each run first redraws the stochastic-rounding salt, so that
    every replay rounds anew. Returns (the eager run's result, the graph, the captured run's)."""
    def run():
        refresh_sr_salt(device)
        return step()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = run()
    torch.cuda.current_stream().wait_stream(side)
    if between is not None:
        between()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    return eager, graph, captured


class GraphedMicroStep:
    """model(X, Y) -> (logits, loss); a call runs loss.backward() scaled by `scale` on the batch
    (X, Y) and returns the loss (a graph-owned tensor: use it before the next call)."""

    def __init__(self, model, autocast, scale, fallback=None):
        self.model, self.autocast, self.scale, self.fallback = model, autocast, scale, fallback
        self.graph = None
        self.side = None                         # the eager runs' stream, one for all captures
        self.replayed = False                    # since the last end_step()
        self.captures = 0                        # how often it (re-)captured: a diagnostic

    def __call__(self, X, Y):
        if self.graph is None or X.shape != self.x.shape:
            return self._capture(X, Y)
        self.x.copy_(X)
        self.y.copy_(Y)
        if self.fallback is not None:
            self.fallback.stats = dict(self.stats)
        self.graph.replay()
        self.replayed = True
        return self.loss

    def end_step(self):
        """After the step (the host has synced with it): learn the replays' fallback flag counts;
        the next call re-captures when one outgrew its plane."""
        if self.replayed and self.fallback is not None and self.fallback.read_captured():
            self.graph = None
        self.replayed = False

    def _run(self):
        with self.autocast:
            _, loss = self.model(self.x, self.y)
        (loss * self.scale).backward()
        return loss.detach()

    def _capture(self, X, Y):
        """Run this micro-step eagerly on a side stream (torch's recipe: lazy initialisation
        happens outside the capture; its loss and gradients are this micro-step's), then capture
        it (which runs nothing)."""
        # drop every reference into the old graph's memory pool first, so that it is freed
        # before the eager run allocates (else a re-capture's peak holds two steps' activations)
        self.graph = self.loss = self.stats = None
        fb = self.fallback
        if fb is not None:
            fb.flush()                           # (also forgets the captured counts)
            fb.stats = {}
        self.x, self.y = X.clone(), Y.clone()
        for p in self.model.parameters():       # backward must add into existing gradients
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        # one side stream for every capture: cuBLAS keeps a workspace per stream it ran on
        # (64 MiB on an H100), so a new stream per re-capture would hold one more each time
        self.side = self.side or torch.cuda.Stream()
        eager_stats = {}

        def between():
            if fb is not None:
                fb.flush()                       # (reads the eager run's counts: one sync)
                eager_stats.update(fb.stats)
        loss, graph, self.loss = capture_step(self._run, self.x.device, self.side, between)
        loss = loss.clone()
        self.graph, self.captures = graph, self.captures + 1
        if fb is not None:                       # the captured forward's, for the replays; this
            self.stats, fb.stats = dict(fb.stats), eager_stats    # step's are the eager run's
        return loss
