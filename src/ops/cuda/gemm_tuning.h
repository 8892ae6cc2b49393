// cuBLASLt algorithms chosen by timing instead of by the heuristic's first
// pick, and kept in a cache file so that every process on the machine makes
// the same choice: a run, a second run and a resumed run stay bit-identical.
//
// cuBLASLt's heuristic ranks its algorithms by a model; on an H200 its first
// pick for GPT-2 small's products is up to 14% slower than the best of its
// top eight (the classifier's forward 1.85 against 1.62 ms), bench notes in
// docs/CUDA.md, "cuBLASLt algorithms by timing". Tuning happens only where
// the caller opens a tuning scope (CudaContext::set_tuning: the training
// step's eager runs) and never inside a graph capture, so inference, whose
// prompt lengths make new shapes all the time, never waits for it.
#pragma once

#include <cublasLt.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "ops/cuda/cuda_context.h"

namespace lsgpt::cuda {

// One cublasLtMatmul call, all but the algorithm: D = A B (+ beta D) with
// the epilogue set in `op`. d_bytes is D's extent, which a timing run with
// beta != 0 would change and which is restored after it.
struct LtCall {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  const void* A = nullptr;
  const void* B = nullptr;
  void* D = nullptr;
  float beta = 0.0f;
  size_t d_bytes = 0;
};

cublasStatus_t run_lt_call(CudaContext& ctx, const LtCall& call, const cublasLtMatmulAlgo_t& algo);

// LSGPT_GEMM_TUNING: unset or "on" (the default), or "off" (the heuristic's
// first pick everywhere, no cache file read or written).
bool gemm_tuning_enabled();

// The cache file: $LSGPT_CACHE_DIR/gemm-algos.tsv, else
// $XDG_CACHE_HOME/lsgpt/..., else $HOME/.cache/lsgpt/...; "" when none of
// them is set (then nothing is tuned: tune_gemm). One line per
// product: key, the algorithm's 8 words in hex, its time in ms.
std::string gemm_cache_path();

// The key under which a product's algorithm is stored: this GPU's name, SM
// count, cuBLASLt version and workspace size, then `shape` (the product's shape, strides,
// alignments and epilogue, from the caller).
std::string gemm_cache_key(CudaContext& ctx, const std::string& shape);

// The algorithm stored for key, if cuBLASLt accepts it for call.
std::optional<cublasLtMatmulAlgo_t> stored_gemm_algo(CudaContext& ctx, const std::string& key,
                                                     const LtCall& call);

// Times every candidate on ctx's stream (the call's inputs are unchanged;
// D, when beta != 0, is restored) and stores the fastest under key. Under
// the cache file's lock, so a process that finds the key stored by another
// meanwhile takes that one: the first to store a key decides it for all.
// Without a cache file that can be locked and written (no directory set,
// read-only, full, its lock held for more than a minute) nothing is timed:
// the heuristic's first pick, candidates[0], which every process would
// make. nullopt if cuBLASLt ran none of the candidates. Waits for the
// device; must not run during a capture. candidates is not empty.
std::optional<cublasLtMatmulAlgo_t> tune_gemm(
    CudaContext& ctx, const std::string& key, const LtCall& call,
    const std::vector<cublasLtMatmulHeuristicResult_t>& candidates);

}  // namespace lsgpt::cuda
