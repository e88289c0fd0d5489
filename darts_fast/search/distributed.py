"""Collectives over the ranks of a process group, for a search that several processes run
together (``torchrun``; NCCL on GPUs, gloo on CPUs): each rank computes on its shard of the batch,
and the architect averages what the DARTS formulas need, one all-reduce of a flattened buffer per
quantity (not one per tensor); the ranks agree on whether a step is kept; a cheap hash shows that
the alphas stay identical on every rank; ``sum_over_ranks`` carries gradients across the ranks
for statistics taken over the whole batch (``darts_fast.search.sync_batch_norm``)."""
import torch
import torch.distributed as dist


def mean_over_ranks(tensors, group):
    """``tensors`` (one dtype and device) averaged over the ranks of ``group`` by one all-reduce
    of their concatenation, returned as views of it; with ``group`` None (one process) the
    tensors themselves."""
    tensors = list(tensors)
    if group is None:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat.div_(dist.get_world_size(group))
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]),
                                                   tensors)]


def sum_over_ranks(tensor, group):
    """The sum of ``tensor`` over the ranks of ``group`` (one all-reduce), differentiable: the
    gradient of a sum that every rank uses is the sum of the ranks' gradients, itself an
    all-reduce (so double backward works too). Every rank must call it, in the same order, in
    the forward and in the backward pass."""
    return _SumOverRanks.apply(tensor, group)


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        return _SumOverRanks.apply(grad, ctx.group), None


def all_ranks_agree(flag, group):
    """A 0-dim bool device tensor, true where it is true on every rank of ``group`` (one
    all-reduce, no host read); ``flag`` itself for one process."""
    if group is None:
        return flag
    as_int = flag.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MIN, group=group)
    return as_int.bool()


# Odd multipliers of a position-dependent hash (Knuth's and the golden ratio's constants).
_HASH_A, _HASH_B = 2654435761, 0x9E3779B97F4A7C15 - 2**64


def bits_hash(tensors):
    """A 0-dim int64 hash of the bits of ``tensors`` (one device): equal bits, equal hash; one
    flipped bit anywhere, a different one (up to 64-bit wrap-around collisions)."""
    total = None
    offset = 0
    for t in tensors:
        flat = t.detach().reshape(-1)
        bits = flat.view({8: torch.int64, 4: torch.int32, 2: torch.int16,
                          1: torch.uint8}[flat.element_size()]).to(torch.int64)
        position = torch.arange(offset, offset + bits.numel(), device=bits.device)
        part = ((bits + _HASH_B) * (position * _HASH_A + 1)).sum()
        total = part if total is None else total * 31 + part
        offset += bits.numel()
    return total


def check_identical(tensors, group, what):
    """Raises RuntimeError naming the ranks when ``tensors`` differ in any bit between the ranks
    of ``group`` (one all-gather of an 8-byte hash, one host read): for the alphas, which every
    rank must hold alike. Nothing to check for one process."""
    if group is None:
        return
    mine = bits_hash(tensors).reshape(1)
    hashes = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(hashes, mine, group=group)
    values = torch.cat(hashes).tolist()
    differ = [rank for rank, h in enumerate(values) if h != values[0]]
    if differ:
        raise RuntimeError(f"the {what} differ between the ranks: rank(s) "
                           f"{', '.join(map(str, differ))} hold other values than rank 0")
