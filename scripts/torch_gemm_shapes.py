#!/usr/bin/env python3
"""torch.mm throughput (GFLOP/s: best and median of 20) at the GEMM shapes of `qlstm bench`'s
configs: the PyTorch side of examples/gemm_shapes.rs (which reports medians of 15), to tell a
host's SGEMM (MKL in the PyPI wheel) from faer's and ours on the shapes training actually runs.
Every operand here is row-major (the transposed views of the Rust side are not reproduced).

usage: OMP_NUM_THREADS=T VENV/bin/python scripts/torch_gemm_shapes.py T   (T = 1 or 2 threads)
"""
import sys, time, torch
t = int(sys.argv[1]); torch.set_num_threads(t)
shapes = [("char step h·W_hᵀ",64,512,2048),("char half-batch step",32,512,2048),("char half-batch back",32,2048,512),
 ("char window dW_h = Hᵀ·dG",512,6400,2048),("word1 half-batch step",10,300,1200),("word1 softmax X·Wᵀ",700,300,10000),
 ("word2 step",20,650,2600),("word2 half-batch step",10,650,2600),("word2 half-batch back",10,2600,650),
 ("word2 input X·W_xᵀ",700,650,2600),("word2 softmax X·Wᵀ",700,650,10000),("word2 softmax dX = dY·W",700,10000,650),
 ("mnist half-batch step",50,100,400),("mnist dW_h = Hᵀ·dG",100,78400,400),("square 2048",2048,2048,2048)]
print(f"torch {torch.__version__} threads {t}; GFLOP/s: best of 20, median of 20")
for what,m,k,n in shapes:
    a=torch.full((m,k),0.5); b=torch.full((k,n),0.25); c=torch.zeros(m,n)
    times=[]
    for _ in range(20):
        t0=time.perf_counter(); torch.mm(a,b,out=c); times.append(time.perf_counter()-t0)
    times.sort()
    best,median=times[0],times[len(times)//2]
    print(f"{what:<34} {m}×{k}·{k}×{n} {2*m*k*n/best/1e9:7.1f} {2*m*k*n/median/1e9:7.1f}")
