// cuBLASLt, opened at its first call instead of at program start.
//
// A program linked to libcublasLt.so runs the library's initialisers when it
// starts: 0.37 s of CPU and page faults on a 2-core machine (an empty main()
// linked to it, 2026-12-02), paid by every `lsgpt` command and every test
// process, GPU or not, though only a CUDA backend calls cuBLASLt. The CUDA
// backend is therefore linked to these definitions of the functions it calls,
// not to the library: the first call opens libcublasLt (dlopen) and each
// forwards to the library's function of the same name. <cublasLt.h> declares
// them extern "C", so a signature here that differs from the header's does not
// compile. If the library cannot be opened, every call returns
// CUBLAS_STATUS_NOT_INITIALIZED and cublasLtGetStatusString says why, which the
// backend's CUBLAS_CHECK puts in its error.
#include <cublasLt.h>
#include <dlfcn.h>

#include <string>

namespace {

struct Library {
  void* handle = nullptr;
  std::string error;  // why `handle` is null
};

// Opened once, on the first call, and never closed (as a linked library).
const Library& library() {
  static const Library lib = [] {
    Library l;
    // The soname is found as the dynamic linker found the linked library
    // (LD_LIBRARY_PATH, the executable's RUNPATH, the system's cache); then in
    // the directory CMake found the library in.
    const std::string soname = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
    l.handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!l.handle) {
      const std::string path = std::string(LSGPT_CUBLASLT_DIR) + "/" + soname;
      l.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!l.handle) {
        const char* why = dlerror();
        l.error = "cuBLASLt could not be loaded (" + soname + ", nor " + path + "): " +
                  (why ? why : "unknown dlopen error");
      }
    }
    return l;
  }();
  return lib;
}

// The library's function `name`, of the type of our declaration `Fn`; null if
// the library did not open or lacks it.
template <typename Fn>
Fn resolve(const char* name) {
  const Library& lib = library();
  return lib.handle ? reinterpret_cast<Fn>(dlsym(lib.handle, name)) : nullptr;
}

constexpr cublasStatus_t kNotLoaded = CUBLAS_STATUS_NOT_INITIALIZED;

}  // namespace

extern "C" {

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* handle) {
  static const auto fn = resolve<decltype(&cublasLtCreate)>("cublasLtCreate");
  return fn ? fn(handle) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t handle) {
  static const auto fn = resolve<decltype(&cublasLtDestroy)>("cublasLtDestroy");
  return fn ? fn(handle) : kNotLoaded;
}

const char* CUBLASWINAPI cublasLtGetStatusString(cublasStatus_t status) {
  static const auto fn = resolve<decltype(&cublasLtGetStatusString)>("cublasLtGetStatusString");
  if (fn) return fn(status);
  return library().handle ? "cublasLtGetStatusString is missing from libcublasLt"
                          : library().error.c_str();
}

size_t CUBLASWINAPI cublasLtGetVersion(void) {
  static const auto fn = resolve<decltype(&cublasLtGetVersion)>("cublasLtGetVersion");
  return fn ? fn() : 0;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                           const void* alpha, const void* A,
                                           cublasLtMatrixLayout_t Adesc, const void* B,
                                           cublasLtMatrixLayout_t Bdesc, const void* beta,
                                           const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                                           cublasLtMatrixLayout_t Ddesc,
                                           const cublasLtMatmulAlgo_t* algo, void* workspace,
                                           size_t workspace_bytes, cudaStream_t stream) {
  static const auto fn = resolve<decltype(&cublasLtMatmul)>("cublasLtMatmul");
  return fn ? fn(handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo,
                 workspace, workspace_bytes, stream)
            : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoCheck(cublasLtHandle_t handle,
                                                    cublasLtMatmulDesc_t desc,
                                                    cublasLtMatrixLayout_t Adesc,
                                                    cublasLtMatrixLayout_t Bdesc,
                                                    cublasLtMatrixLayout_t Cdesc,
                                                    cublasLtMatrixLayout_t Ddesc,
                                                    const cublasLtMatmulAlgo_t* algo,
                                                    cublasLtMatmulHeuristicResult_t* result) {
  static const auto fn = resolve<decltype(&cublasLtMatmulAlgoCheck)>("cublasLtMatmulAlgoCheck");
  return fn ? fn(handle, desc, Adesc, Bdesc, Cdesc, Ddesc, algo, result) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t Adesc,
    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
    cublasLtMatmulPreference_t preference, int requested,
    cublasLtMatmulHeuristicResult_t results[], int* returned) {
  static const auto fn =
      resolve<decltype(&cublasLtMatmulAlgoGetHeuristic)>("cublasLtMatmulAlgoGetHeuristic");
  return fn ? fn(handle, desc, Adesc, Bdesc, Cdesc, Ddesc, preference, requested, results,
                 returned)
            : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc,
                                                     cublasComputeType_t compute_type,
                                                     cudaDataType_t scale_type) {
  static const auto fn = resolve<decltype(&cublasLtMatmulDescCreate)>("cublasLtMatmulDescCreate");
  return fn ? fn(desc, compute_type, scale_type) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  static const auto fn =
      resolve<decltype(&cublasLtMatmulDescDestroy)>("cublasLtMatmulDescDestroy");
  return fn ? fn(desc) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                                           cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t bytes) {
  static const auto fn =
      resolve<decltype(&cublasLtMatmulDescSetAttribute)>("cublasLtMatmulDescSetAttribute");
  return fn ? fn(desc, attr, buf, bytes) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  static const auto fn =
      resolve<decltype(&cublasLtMatmulPreferenceCreate)>("cublasLtMatmulPreferenceCreate");
  return fn ? fn(pref) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  static const auto fn =
      resolve<decltype(&cublasLtMatmulPreferenceDestroy)>("cublasLtMatmulPreferenceDestroy");
  return fn ? fn(pref) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(
    cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
    size_t bytes) {
  static const auto fn = resolve<decltype(&cublasLtMatmulPreferenceSetAttribute)>(
      "cublasLtMatmulPreferenceSetAttribute");
  return fn ? fn(pref, attr, buf, bytes) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout,
                                                       cudaDataType type, uint64_t rows,
                                                       uint64_t cols, int64_t ld) {
  static const auto fn =
      resolve<decltype(&cublasLtMatrixLayoutCreate)>("cublasLtMatrixLayoutCreate");
  return fn ? fn(layout, type, rows, cols, ld) : kNotLoaded;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  static const auto fn =
      resolve<decltype(&cublasLtMatrixLayoutDestroy)>("cublasLtMatrixLayoutDestroy");
  return fn ? fn(layout) : kNotLoaded;
}

}  // extern "C"
