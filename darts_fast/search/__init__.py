"""The search step, whatever the method: the architect, the whole step (captured on CUDA), the
device-side skip of a non-finite step, the averages over ranks and BatchNorm over all ranks."""
