"""``python -m reference.measure.ring_block``: ring attention's block kernel on a CUDA GPU, checked and
timed. ``ring.block_attention`` (aten's flash kernel with its log-sum-exp) against ``ring._eager_block``
(the scores in fp32 maths): the largest difference of the output and of the log-sum-exp for causal and
unmasked blocks of MHA, GQA and MQA shapes in bf16, fp16 and fp32 (fp32 takes the eager path on CUDA:
difference 0), then the time and TFLOP/s of both on an 8k x 8k unmasked Llama-2-7B block (bf16).
Results: docs/benchmarks.md, "Ring attention's block kernel".
"""
from __future__ import annotations

import sys
import time


def main() -> int:
    import torch

    from reference.schemes.ring import _eager_block, block_attention

    if not torch.cuda.is_available():
        print("python -m reference.measure.ring_block: error: needs a CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dev = "cuda"
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for causal in (True, False):
            for nh, nkv, t, hd in ((32, 8, 1024, 128), (71, 1, 512, 64), (32, 32, 300, 128)):
                s = t if causal else 2 * t
                q = torch.randn(1, nh, t, hd, device=dev, dtype=dtype)
                k, v = (torch.randn(1, nkv, s, hd, device=dev, dtype=dtype) for _ in range(2))
                a, b = block_attention(q, k, v, causal=causal), _eager_block(q, k, v, causal=causal)
                print(f"{str(dtype):<15} causal={causal!s:<5} nh={nh:<3} nkv={nkv:<3} out max err "
                      f"{(a[0] - b[0]).abs().max().item():.2e}  lse max err {(a[1] - b[1]).abs().max().item():.2e}")
    q = torch.randn(1, 32, 8192, 128, device=dev, dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    flops = 4 * 32 * 8192 * 8192 * 128
    for fn, name in ((block_attention, "flash with lse"), (_eager_block, "eager fp32")):
        for _ in range(2):
            fn(q, k, v, causal=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            fn(q, k, v, causal=False)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 5
        print(f"{name}: 8k x 8k unmasked block, {seconds * 1e3:.2f} ms, {flops / seconds / 1e12:.0f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
