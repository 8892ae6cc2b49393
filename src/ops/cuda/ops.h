// Launchers of the CUDA kernels, one group per .cu file, called by the
// Backend adapter in cuda_backend.cu. Semantics are those of ops/backend.h;
// element types: bf16 for parameters/activations/gradients, f32 for
// statistics and optimizer state.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "ops/attention_spec.h"
#include "ops/backend.h"
#include "ops/cuda/cuda_context.h"

namespace lsgpt::cuda {

using bf16 = __nv_bfloat16;

// The LSGPT_CUDA_* switches that select a kernel path's predecessor
// (docs/CUDA.md): true when environment variable `name` is set to `value`.
// Read on every call, so a test can flip it.
bool env_is(const char* name, const char* value);

// embedding.cu
void embedding_forward(CudaContext& ctx, bf16* out, const int32_t* tokens, const bf16* wte,
                       const bf16* wpe, int B, int T, int C, int pos0);
void embedding_backward(CudaContext& ctx, bf16* dwte, bf16* dwpe, const bf16* dout,
                        const int32_t* tokens, int B, int T, int C);

// layernorm.cu
void layernorm_forward(CudaContext& ctx, bf16* out, float* mean, float* rstd, const bf16* inp,
                       const bf16* weight, const bf16* bias, int N, int C);
void add_layernorm_forward(CudaContext& ctx, bf16* residual, bf16* out, float* mean, float* rstd,
                           const bf16* delta, const bf16* weight, const bf16* bias, int N, int C);
void layernorm_backward(CudaContext& ctx, bf16* dinp, bf16* dweight, bf16* dbias,
                        bf16* dinp_colsum, const bf16* dout, const bf16* inp, const bf16* weight,
                        const float* mean, const float* rstd, int N, int C);

// matmul.cu
void matmul_forward(CudaContext& ctx, bf16* out, bf16* pre_gelu, const bf16* inp,
                    const bf16* weight, const bf16* bias, int N, int C, int OC);
// matmul_small.cu: the same product for N <= kMatmulSmallMaxRows rows (a
// decode step), bound by reading the weights; false (nothing done) when the
// shape or alignment does not suit it.
constexpr int kMatmulSmallMaxRows = 8;
bool matmul_small_forward(CudaContext& ctx, bf16* out, bf16* pre_gelu, const bf16* inp,
                          const bf16* weight, const bf16* bias, int N, int C, int OC);
void matmul_backward(CudaContext& ctx, bf16* dinp, bf16* dweight, bf16* dbias, bf16* dout,
                     const bf16* inp, const bf16* weight, const bf16* pre_gelu,
                     const bf16* inp_pre_gelu, int N, int C, int OC);
// How the last matmul_backward with a bias gradient computed it.
enum class DbiasPath { none, epilogue_f32, epilogue_bf16, column_sum };
DbiasPath matmul_last_dbias_path();

// gelu.cu (tanh form, as GPT-2)
void gelu_forward(CudaContext& ctx, bf16* out, const bf16* inp, size_t n);
void gelu_backward(CudaContext& ctx, bf16* dinp, const bf16* inp, const bf16* dout, size_t n);

// residual.cu
void residual_forward(CudaContext& ctx, bf16* out, const bf16* a, const bf16* b, size_t n);
void add_inplace(CudaContext& ctx, bf16* dst, const bf16* src, size_t n);

// norm.cu: column sums (bias gradients) and the squared norm for clipping.
// dst[c] += sum over rows r of src[r, c], summed in a fixed order.
void column_sum_accumulate(CudaContext& ctx, bf16* dst, const bf16* src, int rows, int cols);
// Adds f32 partial sums [parts, cols] into dst[c] (bf16), parts summed in order.
void reduce_partials_accumulate(CudaContext& ctx, bf16* dst, const float* partials, int parts,
                                int cols);
// Two [parts, cols] f32 buffers of row-part sums in the context's scratch
// (valid until its next scratch() call), for the ops with two parameter
// gradients (LayerNorm's weight and bias, QK-norm's two gains), and with
// with_third a third one from the same allocation (the fused LayerNorm
// backward's dinp column sums), else third is null. accumulate() adds each
// buffer's ordered sum over the parts into its bf16 gradient, as
// reduce_partials_accumulate, all buffers in one launch.
struct PartialSums {
  float *first, *second, *third = nullptr;
  int parts, cols;
  PartialSums(CudaContext& ctx, int parts, int cols, bool with_third = false);
  void accumulate(CudaContext& ctx, bf16* first_dst, bf16* second_dst,
                  bf16* third_dst = nullptr) const;
};
double sum_squares(CudaContext& ctx, const bf16* x, size_t n);

// classifier.cu
void softmax_cross_entropy(CudaContext& ctx, float* losses, bf16* logits, const int32_t* targets,
                           int N, int V, int Vp, float dloss, bool compute_grad, float z_coef,
                           float* lse);

// qk_norm.cu: per-head RMSNorm of q and k (ops/backend.h).
void qk_norm_forward(CudaContext& ctx, bf16* out, float* rstd, const bf16* qkv,
                     const bf16* q_gain, const bf16* k_gain, int N, int n_head, int D, float eps);
void qk_norm_backward(CudaContext& ctx, bf16* dqkv, bf16* dq_gain, bf16* dk_gain,
                      const bf16* dout, const bf16* qkv, const bf16* q_gain, const bf16* k_gain,
                      const float* rstd, int N, int n_head, int D);

// adamw.cu
void adamw_update(CudaContext& ctx, bf16* param, float* master, const bf16* grad, float* m,
                  float* v, size_t n, const AdamWSettings& s);
// The training step's form: every segment of the flat buffers in one launch
// (Backend::adamw_update_segments), the same bits as adamw_update per segment.
void adamw_update_segments(CudaContext& ctx, bf16* param, float* master, const bf16* grad,
                           float* m, float* v, const AdamWSegment* segments,
                           size_t n_segments, const AdamWSettings& s);

// attention_forward.cu, attention_backward.cu, attention_decode.cu
void attention_forward(CudaContext& ctx, bf16* out, float* lse, float* max_logit, bf16* kbar,
                       const bf16* qkv, const AttentionSpec& spec);
// Whether attention_forward(spec) takes the sm_90a wgmma kernel
// (attention_forward_sm90.cu) rather than the sm_80 one.
bool attention_forward_uses_sm90(CudaContext& ctx, const AttentionSpec& spec);
// dqkv_colsum [3C] (may be null): += the column sums of dqkv over its B T
// rows, the qkv projection's bias gradient, summed by the two-pass kernels
// in their row epilogues (f32 part sums of 16 rows, then an ordered
// reduction: the same bits every run); the opt-in one_pass kernels, whose
// dQ is itself summed by atomics, leave it to a column-sum pass over dqkv.
void attention_backward(CudaContext& ctx, bf16* dqkv, bf16* dqkv_colsum, const bf16* dout,
                        const bf16* qkv, const bf16* out, const float* lse, const bf16* kbar,
                        const AttentionSpec& spec);
// Whether attention_backward(spec) takes the sm_90a wgmma kernel
// (attention_backward_sm90.cu) rather than the sm_80 one.
bool attention_backward_uses_sm90(CudaContext& ctx, const AttentionSpec& spec);
// The kernel the last attention_backward call ran, after every choice and
// fallback: "sm80" (also before the first call), or the Hopper variant's
// LSGPT_ATTENTION_SM90_BACKWARD name ("ws", "ws_one_pass", ...).
const char* attention_backward_last_kernel();
// Whether the last attention_backward call formed the span's cross basis on
// k in a pass of its own (launch_key_direction_sm90) before that kernel.
bool attention_backward_last_ran_key_direction_pass();
void attention_decode(CudaContext& ctx, bf16* out, bf16* k_local, bf16* v_local,
                      bf16* k_global, bf16* v_global, const bf16* qkv, const DecodeSpec& spec);
size_t attention_decode_workspace_bytes(const DecodeSpec& spec);
// kv_cache.cu
void kv_cache_write(CudaContext& ctx, bf16* k_local, bf16* v_local, bf16* k_global,
                    bf16* v_global, const bf16* qkv, int T, int cache_row, const DecodeSpec& spec);
void embedding_decode(CudaContext& ctx, bf16* out, const int32_t* tokens, const int32_t* positions,
                      const bf16* wte, const bf16* wpe, int B, int C);

// sampling.cu
void sample_tokens(CudaContext& ctx, int32_t* tokens, const bf16* logits, SampleParams* params,
                   int B, int V, int Vp, int32_t* advance, int32_t* next_input);

}  // namespace lsgpt::cuda
