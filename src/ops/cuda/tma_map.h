// Host side of the Hopper kernels' TMA tile loads and stores: tensor maps
// (cuTensorMapEncodeTiled, reached through the runtime's driver entry point,
// so nothing links against libcuda) over the per-head columns of a
// [B, T, n_slots * head_dim] bf16 activation, in the panel layout of
// wgmma.cuh (64-column panels, 128-byte swizzle). Used by
// attention_forward_sm90_ws.cu and attention_backward_sm90_ws.cu.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstddef>

namespace lsgpt::cuda {

// The 4-d view (head column < head_dim, head slot < n_slots, t < T, batch
// row < B) of `base`, whose rows are row_elems elements apart: slot s of
// row t is base[(b T + t) row_elems + s head_dim ...]. A box is one
// 64-column panel of box_rows rows; elements past head_dim or T read as
// zeros, and a store's are not written. head_dim must be a multiple of 8
// and base 16-byte aligned (the attention ops check both for their
// inputs; the forward's dispatch checks out before its ws kernels store to
// it). Errors (fail) name `what`.
CUtensorMap head_tensor_map(const __nv_bfloat16* base, int head_dim, int n_slots,
                            size_t row_elems, int T, int B, int box_rows, const char* what);

}  // namespace lsgpt::cuda
