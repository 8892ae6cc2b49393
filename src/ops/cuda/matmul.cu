// Matrix products through cuBLASLt (bf16 in/out, f32 accumulate). The forward
// fuses the bias and the GELU (tanh form, pre-activation saved as the aux
// output) into cuBLASLt's epilogue, and the backward's input gradient takes
// the GELU derivative of the layer below in the DGELU epilogue (aux input);
// shapes or alignments for which cuBLASLt offers no fused algorithm fall back
// to a plain product plus our own bias / GELU kernel. Each product's
// algorithm is chosen once per shape: cuBLASLt's heuristic first pick, or,
// in a tuning scope (the training step's eager runs), the fastest of its
// candidates by timing, kept in a per-machine cache file (gemm_tuning.h).
//
// The backward's dbias is our own ordered column sum of dout (norm.cu), a
// separate pass. LSGPT_CUDA_DBIAS=bgradb takes it from the weight-gradient
// product's BGRADB epilogue instead (the column sums reduced over the
// product's k = N rows); that epilogue overwrites its output while the
// interface accumulates, so it writes an f32 vector in scratch (or bf16 where
// cuBLASLt takes no f32 bias type) that one small kernel adds into dbias. It
// lost on an H200 (docs/CUDA.md): cuBLASLt 13 runs BGRADB as a separate
// epilogue kernel (globalKernelBgradAB), slower than the column-sum pass, so
// it is not the default. Both are bit-reproducible run to run on one GPU
// model (algorithms are cached per shape, alignment, epilogue and SM count;
// cuBLASLt's split-K reductions are ordered).
#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "core/env_switch.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/gemm_tuning.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

// Column-major D[m,n] = op(A)[m,k] op(B)[k,n] + beta * D, as cuBLASLt sees it.
struct Gemm {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  const bf16* a = nullptr;
  int lda = 0;
  const bf16* b = nullptr;
  int ldb = 0;
  bf16* d = nullptr;
  int ldd = 0;
  float beta = 0.0f;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // bias (input), or the bias gradient (output) with BGRADB
  cudaDataType_t bias_type = CUDA_R_16BF;
  const bf16* aux = nullptr;  // GELU pre-activation, [m, n] with leading dimension m
};

int alignment(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 2 && address % a != 0) a /= 2;
  return a;
}

using GemmKey = std::tuple<int, int, int, int, int, int, int, int, bool, int, int, int, int, int,
                           int, int, int>;

struct CachedAlgo {
  bool supported = false;
  cublasLtMatmulAlgo_t algo{};
  // Tuned or read from the cache file (or tuning is off): kept for good.
  // Otherwise the heuristic's first pick, made outside a tuning scope.
  bool final = false;
};

std::mutex algo_cache_mutex;
std::map<GemmKey, CachedAlgo> algo_cache;

struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  ~LtDescriptors() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// The key's fields as text, for the tuning cache file.
std::string shape_text(const GemmKey& key) {
  std::string text;
  std::apply([&](const auto&... field) { ((text += std::to_string(field) + ","), ...); }, key);
  text.pop_back();
  return text;
}

// cuBLASLt's ranked algorithms for the product (up to `count`), within our
// workspace and for the pointers' alignments.
std::vector<cublasLtMatmulHeuristicResult_t> heuristic_algos(CudaContext& ctx,
                                                             const LtDescriptors& desc,
                                                             std::array<int, 3> align, int count) {
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t workspace = ctx.cublas_workspace_bytes();
  const uint32_t aligns[4] = {uint32_t(align[0]), uint32_t(align[1]), uint32_t(align[2]),
                              uint32_t(align[2])};
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
  const cublasLtMatmulPreferenceAttributes_t align_attrs[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; ++i)
    st = cublasLtMatmulPreferenceSetAttribute(pref, align_attrs[i], &aligns[i], sizeof(uint32_t));
  std::vector<cublasLtMatmulHeuristicResult_t> results(count);
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(ctx.cublaslt(), desc.op, desc.a, desc.b, desc.d, desc.d,
                                        pref, count, results.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS) found = 0;
  results.resize(found);
  results.erase(std::remove_if(results.begin(), results.end(),
                               [](const auto& r) { return r.state != CUBLAS_STATUS_SUCCESS; }),
                results.end());
  return results;
}

// The algorithm for a product not yet in the process's cache: the cache
// file's, else (in a tuning scope, outside a capture) the fastest of the
// heuristic's top 16 by timing, else the heuristic's first pick.
CachedAlgo choose_algo(CudaContext& ctx, const GemmKey& key, const LtDescriptors& desc,
                       const LtCall& call, std::array<int, 3> align) {
  const bool tuning_on = gemm_tuning_enabled();
  std::string cache_key;
  if (tuning_on) {
    cache_key = gemm_cache_key(ctx, shape_text(key));
    if (auto algo = stored_gemm_algo(ctx, cache_key, call)) return {true, *algo, true};
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(ctx.stream(), &capture));
  const bool tune = tuning_on && ctx.tuning() && capture == cudaStreamCaptureStatusNone;
  const auto candidates = heuristic_algos(ctx, desc, align, tune ? 16 : 1);
  if (candidates.empty()) return {false, {}, true};
  if (!tune) return {true, candidates[0].algo, !tuning_on};
  const auto tuned = tune_gemm(ctx, cache_key, call, candidates);
  if (!tuned) return {false, {}, true};
  return {true, *tuned, true};
}

// Runs the product; returns false when cuBLASLt has no algorithm for it.
bool try_gemm(CudaContext& ctx, const Gemm& g) {
  LtDescriptors desc;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a,
                                              sizeof(op_a)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b,
                                              sizeof(op_b)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                              &g.epilogue, sizeof(g.epilogue)));
  if (g.bias)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                &g.bias, sizeof(g.bias)));
  if (g.bias && g.bias_type != CUDA_R_16BF) {  // bf16, D's type, is cuBLASLt's default
    const int32_t type = g.bias_type;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                &type, sizeof(type)));
  }
  if (g.aux) {
    const int64_t ld_aux = g.m;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                &g.aux, sizeof(g.aux)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                &ld_aux, sizeof(ld_aux)));
  }
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.a, CUDA_R_16BF, g.trans_a ? g.k : g.m,
                                          g.trans_a ? g.m : g.k, g.lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.b, CUDA_R_16BF, g.trans_b ? g.n : g.k,
                                          g.trans_b ? g.k : g.n, g.ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.d, CUDA_R_16BF, g.m, g.n, g.ldd));

  const int align_a = alignment(g.a), align_b = alignment(g.b), align_d = alignment(g.d);
  const int align_bias = g.bias ? alignment(g.bias) : 256;
  const int align_aux = g.aux ? alignment(g.aux) : 256;
  // The bias and aux pointers have alignment needs the preference cannot
  // express; an epilogue is only trusted with 16-byte aligned ones.
  if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT &&
      (align_bias < 16 || align_aux < 16 || (g.aux && g.m % 8 != 0)))
    return false;
  const GemmKey key{g.trans_a, g.trans_b, g.m, g.n, g.k, g.lda, g.ldb, g.ldd, g.beta != 0.0f,
                    int(g.epilogue), align_a, align_b, align_d, align_bias, align_aux,
                    ctx.sm_count(), int(g.bias_type)};
  LtCall call;
  call.op = desc.op, call.a = desc.a, call.b = desc.b, call.d = desc.d;
  call.A = g.a, call.B = g.b, call.D = g.d, call.beta = g.beta;
  call.d_bytes = sizeof(bf16) * (size_t(g.ldd) * (g.n - 1) + g.m);
  CachedAlgo cached;
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(algo_cache_mutex);
    auto it = algo_cache.find(key);
    if (it != algo_cache.end()) cached = it->second, found = true;
  }
  // A heuristic pick made outside a tuning scope is looked at again inside one.
  if (!found || (!cached.final && ctx.tuning())) {
    cached = choose_algo(ctx, key, desc, call, {align_a, align_b, align_d});
    std::lock_guard<std::mutex> lock(algo_cache_mutex);
    algo_cache[key] = cached;
  }
  if (!cached.supported) return false;
  CUBLAS_CHECK(run_lt_call(ctx, call, cached.algo));
  return true;
}

void gemm(CudaContext& ctx, const Gemm& g) {
  if (!try_gemm(ctx, g))
    fail("cuBLASLt has no algorithm for a bf16 matrix product of shape m=", g.m, " n=", g.n,
         " k=", g.k);
}

__global__ void add_bias_kernel(bf16* out, const bf16* bias, int N, int OC) {
  wait_for_previous_grid();
  allow_next_grid();
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= size_t(N) * OC) return;
  out[i] = __float2bfloat16(__bfloat162float(out[i]) + __bfloat162float(bias[i % OC]));
}

std::atomic<DbiasPath> last_dbias_path{DbiasPath::none};

// dweight += inp^T dout (gw) with dbias += the column sums of dout from the
// BGRADB epilogue; false (nothing done) where cuBLASLt offers no algorithm.
bool weight_gradient_with_bias(CudaContext& ctx, Gemm gw, bf16* dbias, int OC) {
  void* sums = ctx.scratch(sizeof(float) * size_t(OC));
  gw.epilogue = CUBLASLT_EPILOGUE_BGRADB, gw.bias = sums;
  gw.bias_type = CUDA_R_32F;
  if (try_gemm(ctx, gw)) {
    reduce_partials_accumulate(ctx, dbias, static_cast<const float*>(sums), 1, OC);
    last_dbias_path = DbiasPath::epilogue_f32;
    return true;
  }
  gw.bias_type = CUDA_R_16BF;
  if (try_gemm(ctx, gw)) {
    add_inplace(ctx, dbias, static_cast<const bf16*>(sums), size_t(OC));
    last_dbias_path = DbiasPath::epilogue_bf16;
    return true;
  }
  return false;
}

// LSGPT_CUDA_DBIAS: unset or "column-sum" (the default), or "bgradb".
bool dbias_from_epilogue() {
  return env_switch("LSGPT_CUDA_DBIAS", {"column-sum", "bgradb"}) == 1;
}

}  // namespace

DbiasPath matmul_last_dbias_path() { return last_dbias_path; }


void matmul_forward(CudaContext& ctx, bf16* out, bf16* pre_gelu, const bf16* inp,
                    const bf16* weight, const bf16* bias, int N, int C, int OC) {
  if (N == 0 || OC == 0) return;
  LSGPT_CHECK(C > 0, "matmul with an empty inner dimension");
  if (matmul_small_forward(ctx, out, pre_gelu, inp, weight, bias, N, C, OC)) return;
  Gemm g;
  g.trans_a = true, g.m = OC, g.n = N, g.k = C;
  g.a = weight, g.lda = C, g.b = inp, g.ldb = C, g.ldd = OC;
  if (pre_gelu) {
    g.d = out, g.aux = pre_gelu, g.bias = bias;
    g.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    if (try_gemm(ctx, g)) return;
    g.aux = nullptr;
  }
  // Without a fused GELU the product lands in pre_gelu (if any), then out = gelu(pre_gelu).
  bf16* product = pre_gelu ? pre_gelu : out;
  g.d = product, g.bias = bias;
  g.epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  if (!bias || !try_gemm(ctx, g)) {
    g.bias = nullptr, g.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    gemm(ctx, g);
    if (bias) {
      launch_kernel(ctx, add_bias_kernel, ceil_div((long long)N * OC, 256), 256, 0, product, bias,
                    N, OC);
    }
  }
  if (pre_gelu) gelu_forward(ctx, out, pre_gelu, size_t(N) * OC);
}

void matmul_backward(CudaContext& ctx, bf16* dinp, bf16* dweight, bf16* dbias, bf16* dout,
                     const bf16* inp, const bf16* weight, const bf16* pre_gelu,
                     const bf16* inp_pre_gelu, int N, int C, int OC) {
  if (N == 0 || OC == 0 || C == 0) {
    if (dinp && N > 0 && C > 0) CUDA_CHECK(cudaMemsetAsync(dinp, 0, sizeof(bf16) * size_t(N) * C, ctx.stream()));
    return;
  }
  if (pre_gelu) gelu_backward(ctx, dout, pre_gelu, dout, size_t(N) * OC);
  Gemm gi;  // dinp[N,C] = dout[N,OC] weight[OC,C]  (* gelu'(inp_pre_gelu))
  gi.m = C, gi.n = N, gi.k = OC;
  gi.a = weight, gi.lda = C, gi.b = dout, gi.ldb = OC, gi.d = dinp, gi.ldd = C;
  bool gelu_done = false;
  if (inp_pre_gelu) {
    gi.epilogue = CUBLASLT_EPILOGUE_DGELU, gi.aux = inp_pre_gelu;
    gelu_done = try_gemm(ctx, gi);
    gi.epilogue = CUBLASLT_EPILOGUE_DEFAULT, gi.aux = nullptr;
  }
  if (!gelu_done) {
    gemm(ctx, gi);
    if (inp_pre_gelu) gelu_backward(ctx, dinp, inp_pre_gelu, dinp, size_t(N) * C);
  }
  Gemm gw;  // dweight[OC,C] += dout^T inp
  gw.trans_b = true, gw.m = C, gw.n = OC, gw.k = N;
  gw.a = inp, gw.lda = C, gw.b = dout, gw.ldb = OC, gw.d = dweight, gw.ldd = C, gw.beta = 1.0f;
  if (dbias && dbias_from_epilogue() && weight_gradient_with_bias(ctx, gw, dbias, OC))
    return;
  if (dbias) {
    column_sum_accumulate(ctx, dbias, dout, N, OC);
    last_dbias_path = DbiasPath::column_sum;
  }
  gemm(ctx, gw);
}

}  // namespace lsgpt::cuda
