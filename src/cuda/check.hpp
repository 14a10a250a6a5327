// The CUDA error check of the host code (the GPU path and the NCCL backend):
// plain C++, no CUDA headers, no kernels.
#pragma once

namespace ringattn::cuda {

// Throws Error("cuda: <what>: <cudaGetErrorString> (<name>)") unless err == 0.
void check(int err, const char* what);

}  // namespace ringattn::cuda
