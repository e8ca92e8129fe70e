"""PyTorch's SGEMM throughput on this host (MKL or oneDNN underneath): the roof qlstm's own
`qlstm bench` roof is set beside, measured the same way (the second-best of six runs of a
2048³ product, and of the config's window-sized input projection, the better of the two).

usage: python torch_sgemm_roof.py CONFIG THREADS   (prints config,threads,gflops)
"""
import sys
import time

import torch

SHAPES = {"char": (6400, 512, 2048), "word1": (700, 300, 1200), "word2": (700, 650, 2600), "mnist": (78400, 100, 400)}


def main():
    name, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in [(2048, 2048, 2048), SHAPES[name]]:
        a, b, c = torch.full((m, k), 0.5), torch.full((k, n), 0.25), torch.empty(m, n)
        times = []
        for _ in range(6):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * m * k * n / sorted(times)[1] / 1e9)
    print(f"{name},{threads},{best:.1f}", flush=True)


if __name__ == "__main__":
    main()
