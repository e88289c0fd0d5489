"""Averages over the ranks of a process group, for a search that several processes run together
(``torchrun``; NCCL on GPUs, gloo on CPUs): each rank computes on its shard of the batch, and the
architect averages what the DARTS formulas need, one all-reduce of a flattened buffer per
quantity (not one per tensor)."""
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
