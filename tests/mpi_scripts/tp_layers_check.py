"""Tensor-parallel layers against their dense versions, forward and backward,
with the whole world as the tensor group. Prints "TP OK <size>" on rank 0."""
import torch
import torch.nn.functional as F
from mpi4py import MPI
from torch import nn

from mpitrain.tp.cross_entropy import vocab_parallel_cross_entropy
from mpitrain.tp.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding, padded_vocab,
                                shard_range)

comm = MPI.COMM_WORLD
r, n = comm.Get_rank(), comm.Get_size()
TOL = 1e-6


def close(a, b, what):
    err = float((a - b).detach().abs().max()) if a.numel() else 0.0
    assert err < TOL, f"rank {r}: {what} differs by {err:.2e}"


torch.manual_seed(0)  # the same dense layers and data on every rank
x = torch.randn(4, 8)
up, down = nn.Linear(8, 16), nn.Linear(16, 8)
grad_out = torch.randn(4, 8)

# MLP: column-parallel then row-parallel, against dense
xd = x.clone().requires_grad_(True)
dense = down(F.gelu(up(xd)))
dense.backward(grad_out)
col, row = ColumnParallelLinear.from_dense(up, comm), RowParallelLinear.from_dense(down, comm)
xt = x.clone().requires_grad_(True)
out = row(F.gelu(col(xt)))
out.backward(grad_out)
a, b = shard_range(16, r, n)
close(out, dense, "MLP output")
close(xt.grad, xd.grad, "MLP input gradient")
close(col.weight.grad, up.weight.grad[a:b], "column weight gradient")
close(col.bias.grad, up.bias.grad[a:b], "column bias gradient")
close(row.weight.grad, down.weight.grad[:, a:b], "row weight gradient")
close(row.bias.grad, down.bias.grad, "row (replicated) bias gradient")
assert (col.weight.tp_split.dim, row.weight.tp_split.dim, row.bias.tp_split) == (0, 1, None)

# column-parallel with gathered output
lin = nn.Linear(8, 12)
xg = x.clone().requires_grad_(True)
g = ColumnParallelLinear.from_dense(lin, comm, gather_output=True)(xg)
close(g, lin(x), "gathered column output")
g.sum().backward()
xr = x.clone().requires_grad_(True)
lin(xr).sum().backward()
close(xg.grad, xr.grad, "gathered column input gradient")

# vocabulary-parallel embedding; 11 rows do not divide by 2 or 4
emb = nn.Embedding(11, 6)
ids = torch.tensor([[0, 10, 5, 3], [7, 7, 1, 9]])
vp = VocabParallelEmbedding.from_dense(emb, comm)
e = vp(ids)
close(e, emb(ids), "embedding output")
e.backward(torch.ones_like(e))
emb(ids).backward(torch.ones_like(e))
per = padded_vocab(11, n) // n
full_grad = torch.cat([emb.weight.grad, torch.zeros(padded_vocab(11, n) - 11, 6)])
close(vp.weight.grad, full_grad[r * per:(r + 1) * per], "embedding gradient")

# vocabulary-parallel cross-entropy with padded columns and ignored targets
logits = torch.randn(6, 11)
targets = torch.tensor([0, 10, -100, 4, 5, 9])
ld = logits.clone().requires_grad_(True)
dense_loss = F.cross_entropy(ld, targets, ignore_index=-100, reduction="none")
dense_loss.sum().backward()
padded = torch.cat([logits, torch.randn(6, padded_vocab(11, n) - 11)], dim=-1)  # junk in the padding
local = padded[:, r * per:(r + 1) * per].clone().requires_grad_(True)
loss = vocab_parallel_cross_entropy(local, targets, comm, vocab=11)
close(loss, dense_loss, "cross-entropy")
loss.sum().backward()
gfull = torch.cat([ld.grad, torch.zeros(6, padded_vocab(11, n) - 11)], dim=-1)
close(local.grad, gfull[:, r * per:(r + 1) * per], "cross-entropy gradient")

# fused q|k|v (3 blocks, each split by heads) then row-parallel: attention's projections
qkv, proj = nn.Linear(8, 3 * 8), nn.Linear(8, 8)
xd = x.clone().requires_grad_(True)
qd, kd, vd = qkv(xd).chunk(3, dim=-1)
dense = proj(qd * kd + vd)
dense.backward(grad_out)
fused = ColumnParallelLinear.from_dense(qkv, comm, chunks=3)
rowp = RowParallelLinear.from_dense(proj, comm)
xt = x.clone().requires_grad_(True)
qt, kt, vt = fused(xt).chunk(3, dim=-1)
out = rowp(qt * kt + vt)
out.backward(grad_out)
close(out, dense, "fused q|k|v output")
close(xt.grad, xd.grad, "fused q|k|v input gradient")
close(fused.split.join(comm.allgather(fused.weight.grad)), qkv.weight.grad, "fused weight gradient (joined)")

# vocabulary-parallel output layer, 11 outputs padded: padding logits are -inf
head = nn.Linear(6, 11, bias=False)
hp = ColumnParallelLinear.from_dense(head, comm, padded=True)
h = torch.randn(3, 6)
logits = hp(h)
full = torch.cat(comm.allgather(logits.detach()), dim=-1)
close(full[:, :11], head(h).detach(), "padded head logits")
assert bool(torch.isinf(full[:, 11:]).all()) and full.shape[-1] == padded_vocab(11, n)
ld = head(h)
hl = vocab_parallel_cross_entropy(logits, torch.tensor([0, 10, 4]), comm, vocab=11).sum()
hl.backward()
F.cross_entropy(ld, torch.tensor([0, 10, 4]), reduction="sum").backward()
close(hp.split.join(comm.allgather(hp.weight.grad)), head.weight.grad, "padded head gradient (joined)")

# padding_idx: the padding row gets no gradient, as in nn.Embedding
pe = nn.Embedding(11, 6, padding_idx=7)
vpe = VocabParallelEmbedding.from_dense(pe, comm)
out = vpe(ids)
out.backward(torch.ones_like(out))
pe(ids).backward(torch.ones_like(out))
close(vpe.weight.tp_split.join(comm.allgather(vpe.weight.grad)), pe.weight.grad, "padding_idx embedding gradient")

comm.Barrier()
if r == 0:
    print(f"TP OK {n}", flush=True)
