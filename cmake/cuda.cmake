# Decides whether the CUDA backend is built and defines lsgpt_add_cuda_backend().
# sm_90a carries Hopper's wgmma/TMA kernels; compute_80 PTX keeps the binary
# loadable (JIT) on other recent GPUs, where the backend refuses politely.
set(LSGPT_HAVE_CUDA OFF)
if(LSGPT_CUDA STREQUAL "AUTO" OR LSGPT_CUDA)
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(LSGPT_HAVE_CUDA ON)
  elseif(NOT LSGPT_CUDA STREQUAL "AUTO")
    message(FATAL_ERROR "LSGPT_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "lsgpt CUDA backend: ${LSGPT_HAVE_CUDA}")

if(LSGPT_HAVE_CUDA)
  # C++17 for device code: CMake 3.25 does not know nvcc 13's C++20 flag
  # (CUDA_STANDARD 20, or the CXX_STANDARD it falls back to, fails at generate
  # time). The headers the .cu files include are kept C++17-clean.
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  if(NOT DEFINED LSGPT_CUDA_GENCODE)
    set(LSGPT_CUDA_GENCODE
      "-gencode=arch=compute_90a,code=sm_90a;-gencode=arch=compute_80,code=compute_80")
  endif()
endif()

function(lsgpt_add_cuda_backend target)
  if(NOT LSGPT_HAVE_CUDA)
    return()
  endif()
  file(GLOB_RECURSE cuda_sources CONFIGURE_DEPENDS
    ${CMAKE_SOURCE_DIR}/src/ops/cuda/*.cu ${CMAKE_SOURCE_DIR}/src/ops/cuda/*.cpp)
  if(NOT cuda_sources)
    return()
  endif()
  # cuBLASLt is opened at its first call, not linked (src/ops/cublaslt_loader.cpp
  # says why): a cuBLASLt function the backend starts to call needs its
  # forwarder there, and the link fails until it has one.
  set(cublaslt_loader ${CMAKE_SOURCE_DIR}/src/ops/cublaslt_loader.cpp)
  add_library(lsgpt_cuda STATIC ${cuda_sources} ${cublaslt_loader})
  set_source_files_properties(${cublaslt_loader} PROPERTIES
    COMPILE_DEFINITIONS "LSGPT_CUBLASLT_DIR=\"$<TARGET_FILE_DIR:CUDA::cublasLt>\"")
  set_target_properties(lsgpt_cuda PROPERTIES CUDA_ARCHITECTURES OFF
    POSITION_INDEPENDENT_CODE ON CUDA_SEPARABLE_COMPILATION OFF)
  target_include_directories(lsgpt_cuda PUBLIC ${CMAKE_SOURCE_DIR}/src)
  target_compile_options(lsgpt_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:${LSGPT_CUDA_GENCODE} --expt-relaxed-constexpr -lineinfo>)
  target_link_libraries(lsgpt_cuda PUBLIC CUDA::cudart nlohmann_json::nlohmann_json ${CMAKE_DL_LIBS})
  target_link_libraries(${target} PUBLIC lsgpt_cuda)
  # NCCL ships with the CUDA toolkit here and on CI; only the CUDA build links it.
  find_library(LSGPT_NCCL_LIB nccl HINTS ${CUDAToolkit_LIBRARY_DIR} REQUIRED)
  find_path(LSGPT_NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} REQUIRED)
  target_sources(${target} PRIVATE ${CMAKE_SOURCE_DIR}/src/dist/nccl_communicator.cpp)
  target_include_directories(${target} PRIVATE ${LSGPT_NCCL_INCLUDE})
  target_link_libraries(${target} PUBLIC ${LSGPT_NCCL_LIB} CUDA::cudart)
  target_compile_definitions(${target} PUBLIC LSGPT_HAVE_CUDA=1)
endfunction()
