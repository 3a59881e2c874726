#!/usr/bin/env python3
"""PyTorch's side of benches/gemm.rs: one weight matrix times a batch of activations, per kind.

    python3 bench/gemm_torch.py                       # 2 threads, the ViT's and the prefill's shapes
    T=1 SHAPES=1025x1024x4096 python3 bench/gemm_torch.py

A shape MxKxN is M tokens, K inputs, N outputs (2*M*K*N operations). Kinds: f32 and bf16 `x @ w.T`;
`torch._int_mm` on int8 (the raw int8 GEMM bitsandbytes' CPU path calls in eval mode); bitsandbytes
`Linear8bitLt` in eval mode (LLM.int8(), threshold 6.0, bf16 input: activation quantization, outlier search
and rescaling included).
Median of REPS (5) runs after one warm-up. Packages: bench/requirements-bnb.txt.
"""
import os
import statistics
import time

import torch


def timed(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def main():
    threads = int(os.environ.get("T", "2"))
    reps = int(os.environ.get("REPS", "5"))
    shapes = os.environ.get("SHAPES", "1025x1024x3072,1025x1024x4096,1025x4096x1024,512x896x4864,512x4864x896")
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'shape MxKxN':<16} {'kind':<22} {'ms':>10} {'GFLOP/s':>10}")
    try:
        import bitsandbytes as bnb
    except ImportError:
        bnb = None
    g = torch.Generator().manual_seed(0)
    for shape in shapes.split(","):
        m, k, n = (int(v) for v in shape.split("x"))
        x = torch.rand(m, k, generator=g) * 2 - 1
        w = torch.rand(n, k, generator=g) * 2 - 1
        kinds = {
            "f32": lambda: x @ w.T,
        }
        xb, wb = x.bfloat16(), w.bfloat16()
        kinds["bf16"] = lambda: xb @ wb.T
        xi = (x * 127).round().to(torch.int8)
        wti = (w * 127).round().to(torch.int8).T  # [k, n]: a view of the row-major [n, k] weight
        kinds["int8 torch._int_mm"] = lambda: torch._int_mm(xi, wti)
        if bnb is not None:
            lin = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=6.0)
            lin.weight = bnb.nn.Int8Params(w.bfloat16(), requires_grad=False, has_fp16_weights=False)
            # .to() quantizes; eval() matters: in training mode bitsandbytes' CPU path dequantizes the weight
            # and runs a float matmul (MatMul8bitFp), in eval mode it runs LLM.int8() on torch._int_mm.
            lin = lin.to("cpu").eval()
            kinds["bnb Linear8bitLt"] = lambda: lin(xb)
        for name, fn in kinds.items():
            try:
                ms = timed(fn, reps)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{shape:<16} {name:<22} failed: {type(e).__name__}: {str(e)[:80]}")
                continue
            print(f"{shape:<16} {name:<22} {ms:>10.1f} {2 * m * k * n / (ms * 1e6):>10.1f}")


if __name__ == "__main__":
    main()
