"""Per-rank memory and communication of DDP, FSDP2, TP and PP at 2 ranks, and the pipeline bubble.

Two processes (gloo on CPU; torch.multiprocessing on 127.0.0.1) train the same model one step
under each strategy with scratchllm's own functions (train/parallel.py, train/mesh.py):

* memory per rank: bytes of this rank's parameters, gradients and AdamW state (the local shards
  of DTensors) after a step - the steady state that scales with model size - against DDP's and
  the theoretical fractions (FSDP2 and TP about 1/2 of DDP at 2 ranks; PP: one stage's share);
* communication per rank per step: the payload of every gloo collective and send/recv recorded
  by the PyTorch profiler (sum of the input tensors' bytes; fp32). gloo has no reduce-scatter: it
  runs an all-reduce of the full tensor instead, so TP's and FSDP2's payloads here are larger than
  on NCCL, where the ideal ring volumes printed alongside apply;
* the pipeline bubble: PP=2 step time against a single process running the whole model on the
  same batch, bubble = 1 - T_single / (p * T_pp), for m micro-batches, against (p-1)/(m+p-1).
  On CPU small micro-batches also compute less efficiently, and point-to-point sends cost time,
  so the measured figure is an upper bound on the schedule's own bubble.

GPU tokens/s per layout need a machine with several GPUs; none was available.

    python benchmarks/parallel.py [--d-model 256] [--layers 4] [--vocab 4096] [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402
from scratchllm.train.config import OptimConfig, TrainSection  # noqa: E402
from scratchllm.train.mesh import build_layout, parallelize  # noqa: E402
from scratchllm.train.optim import build_optimizer  # noqa: E402
from scratchllm.train.parallel import Dist, apply_ddp, apply_fsdp  # noqa: E402
from scratchllm.train.tp import loss_parallel_context  # noqa: E402

WORLD = 2


def local_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    t = t._local_tensor if hasattr(t, "_local_tensor") else t
    return t.numel() * t.element_size()


def memory(params: list, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    ps = {id(p): p for p in params}.values()
    state = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
                and v.dim() > 0)
    return {"params": sum(local_bytes(p) for p in ps), "grads": sum(local_bytes(p.grad) for p in ps),
            "optim": state}


def comm_bytes(prof) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in prof.events():
        if e.name.startswith("gloo:") and e.input_shapes:
            n = sum(int(torch.tensor(s).prod()) if s else 0 for s in e.input_shapes)
            out[e.name[5:]] = out.get(e.name[5:], 0) + 4 * n
    return out


def worker(rank: int, port: int, args: argparse.Namespace, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.profiler import ProfilerActivity, profile

    cfg = ModelConfig(vocab_size=args.vocab, context_length=args.seq, d_model=args.d_model, n_layers=args.layers,
                      n_heads=8, n_kv_heads=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    d = Dist(rank, WORLD)
    results = {}
    plans = [("ddp", {}), ("fsdp", {}), ("tp", {"tp": 2}), ("pp", {"pp": 2, "pp_microbatches": 4})]
    for name, extra in plans:
        torch.manual_seed(0)
        model = Transformer(cfg)
        pipe, tp = None, extra.get("tp", 1) > 1
        rows = slice(None)
        if name in ("ddp", "fsdp"):  # data parallel: each rank takes half the batch
            half = args.batch // WORLD
            rows = slice(rank * half, (rank + 1) * half)
            run_model = apply_ddp(model, d, torch.device("cpu")) if name == "ddp" else apply_fsdp(model)
            params_of = model
        else:
            train = TrainSection(parallel="fsdp", batch_size=args.batch, **extra)
            layout = build_layout(train, cfg, d, "cpu")
            params_of, pipe = parallelize(model, layout, train, torch.device("cpu"))
            run_model = params_of
        opt = build_optimizer(params_of, OptimConfig(), "cpu")
        params = [p for grp in opt.param_groups for p in grp["params"]]

        def step() -> dict[str, int]:
            if pipe is not None:
                pipe.forward_backward([(x, y)], 1)
            else:
                with loss_parallel_context(tp):
                    _, loss = run_model(x[rows], targets=y[rows])
                    loss.backward()
            grads = memory(params, opt)["grads"]  # before the step frees nothing: gradients at their peak
            opt.step()
            opt.zero_grad(set_to_none=True)
            return grads

        step()  # warm-up (lazy AdamW state, pipeline shape inference)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            grads = step()
        results[name] = {"mem": {**memory(params, opt), "grads": grads}, "comm": comm_bytes(prof)}
        dist.barrier()
    # The bubble: PP=2 with m micro-batches against one process with the whole model and batch.
    bubble = {}
    for m in args.microbatches:
        torch.manual_seed(0)
        train = TrainSection(parallel="fsdp", batch_size=args.batch, pp=2, pp_microbatches=m, pp_schedule="gpipe")
        layout = build_layout(train, cfg, d, "cpu")
        _, pipe = parallelize(Transformer(cfg), layout, train, torch.device("cpu"))
        times = []
        for _ in range(args.repeats + 1):
            dist.barrier()
            t0 = time.perf_counter()
            pipe.forward_backward([(x, y)], 1)
            dist.barrier()
            times.append(time.perf_counter() - t0)
        bubble[m] = statistics.median(times[1:])
    single = []
    if rank == 0:
        ref = Transformer(cfg)
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            _, loss = ref(x, targets=y)
            loss.backward()
            single.append(time.perf_counter() - t0)
    dist.barrier()
    queue.put((rank, results, bubble, statistics.median(single[1:]) if single else None))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, args, queue), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    out = sorted(queue.get(timeout=1800) for _ in procs)
    for p in procs:
        p.join()
    report(args, out)


def report(args, out) -> None:
    mb = 2**20
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"model d_model={args.d_model} layers={args.layers} vocab={args.vocab} (tied head), "
          f"global batch {args.batch} x {args.seq} tokens, 2 ranks, gloo, fp32\n")
    ddp = out[0][1]["ddp"]["mem"]
    total_ddp = sum(ddp.values())
    print("per-rank memory (MiB; rank 0 / rank 1) and fraction of DDP's (rank 0):")
    print(f"{'':6} {'params':>15} {'grads':>15} {'AdamW state':>15} {'total / DDP':>12}  theory")
    theory = {"ddp": "1", "fsdp": "1/2", "tp": "~1/2 (norms replicated)", "pp": "stage share (~1/2)"}
    for name in ("ddp", "fsdp", "tp", "pp"):
        cells = []
        for key in ("params", "grads", "optim"):
            a, b = out[0][1][name]["mem"][key] / mb, out[1][1][name]["mem"][key] / mb
            cells.append(f"{a:7.2f} / {b:5.2f}")
        frac = sum(out[0][1][name]["mem"].values()) / total_ddp
        print(f"{name:6} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {frac:12.2f}  {theory[name]}")
    print("\ncommunication per rank per step (MiB of payload through gloo, rank 0), by operation:")
    for name in ("ddp", "fsdp", "tp", "pp"):
        comm = out[0][1][name]["comm"]
        total = sum(comm.values()) / mb
        parts = ", ".join(f"{k} {v / mb:.2f}" for k, v in sorted(comm.items()))
        print(f"{name:6} {total:8.2f}   ({parts})")
    P = out[0][1]["ddp"]["mem"]["params"] / mb
    print(f"ideal ring volumes on NCCL at 2 ranks, P = {P:.2f} MiB of parameters: DDP all-reduce ~P, "
          f"FSDP2 all-gather x2 + reduce-scatter ~1.5P, TP ~8 x B*T*d activations per layer, "
          f"PP one B*T*d activation (and its gradient) per stage boundary")
    single = out[0][3]
    print(f"\npipeline bubble, pp=2 GPipe (same bubble as 1F1B); one process, whole model and batch: "
          f"{single * 1e3:.1f} ms (median):")
    print(f"{'m':>3} {'step ms':>9} {'measured bubble':>16} {'(p-1)/(m+p-1)':>14}")
    for m in args.microbatches:
        t = max(out[0][2][m], out[1][2][m])
        print(f"{m:3d} {t * 1e3:9.1f} {1 - single / (2 * t):16.2f} {1 / (m + 1):14.2f}")


if __name__ == "__main__":
    main()
