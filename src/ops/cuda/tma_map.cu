// Tensor maps for the Hopper kernels' TMA tile loads and stores (tma_map.h).
#include "ops/cuda/tma_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda {
namespace {

// cuTensorMapEncodeTiled from the driver, found once through the runtime.
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult status{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || !f)
      fail("cuda attention: the driver has no cuTensorMapEncodeTiled (status ", int(status), ")");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

CUtensorMap head_tensor_map(const __nv_bfloat16* base, int head_dim, int n_slots,
                            size_t row_elems, int T, int B, int box_rows, const char* what) {
  const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(n_slots), cuuint64_t(T),
                              cuuint64_t(B)};
  const cuuint64_t row_bytes = cuuint64_t(row_elems) * sizeof(__nv_bfloat16);
  const cuuint64_t strides[3] = {cuuint64_t(head_dim) * sizeof(__nv_bfloat16), row_bytes,
                                 row_bytes * cuuint64_t(T)};
  const cuuint32_t box[4] = {cuuint32_t(attn::kPanelCols), 1, cuuint32_t(box_rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  const CUresult r = encode_tiled()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<__nv_bfloat16*>(base), dims, strides,
      box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail("cuda attention: cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for ", what,
         ", T ", T, ", head_dim ", head_dim, ", ", n_slots, " heads a row, box rows ", box_rows);
  return map;
}

}  // namespace lsgpt::cuda
