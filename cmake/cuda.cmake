# The CUDA backend: built when nvcc is found, skipped otherwise (the CPU build
# never needs it). See docs/cuda.md.
#
# Found: enables the CUDA language for sm_80 and sm_90, builds
# strata_cuda_kernels (kernels/cuda/*.cu and *.cc) and strata_cuda_backend
# (engine/backends/cuda/), links them into strata_engine and
# registers tests/cuda (strata_cuda_tests) and bench/gpu (strata_gpu_bench).
# The engine, test and bench targets are created after this file runs, so that
# part is deferred to the end of the root CMakeLists.txt.
option(STRATA_ENABLE_CUDA "Build the CUDA backend when nvcc is found" ON)

include(CheckLanguage)
set(STRATA_WITH_CUDA OFF)
if(STRATA_ENABLE_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND
     EXISTS /usr/local/cuda/bin/nvcc)
    # nvcc is often not on PATH; check_language honours CUDACXX.
    set(ENV{CUDACXX} /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(STRATA_WITH_CUDA ON)
  endif()
endif()

if(NOT STRATA_WITH_CUDA)
  message(STATUS "strata: no CUDA compiler; building the CPU backend only")
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
enable_language(CUDA)
# CMake 3.25 knows no C++20 flag for nvcc; the .cu files are C++17.
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)
message(STATUS "strata: CUDA backend on (${CMAKE_CUDA_COMPILER}, "
               "CUDA ${CUDAToolkit_VERSION}, sm ${CMAKE_CUDA_ARCHITECTURES})")

# Host warnings apply to the .cc files; nvcc forwards them to the host
# compiler for the .cu files (device code warnings come from nvcc itself).
file(GLOB strata_cuda_srcs CONFIGURE_DEPENDS
  ${CMAKE_SOURCE_DIR}/kernels/cuda/*.cu ${CMAKE_SOURCE_DIR}/kernels/cuda/*.cc)
add_library(strata_cuda_kernels STATIC ${strata_cuda_srcs})
target_include_directories(strata_cuda_kernels PUBLIC ${CMAKE_SOURCE_DIR})
target_compile_options(strata_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:${STRATA_WARNINGS}>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${STRATA_WERROR}>>:-Werror=all-warnings>
  $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr>)
target_link_libraries(strata_cuda_kernels PUBLIC
  CUDA::cudart CUDA::cublasLt absl::status absl::statusor absl::strings)

function(strata_cuda_wire_targets)
  # Imported targets are directory-scoped: find GoogleTest here as well.
  find_package(GTest REQUIRED)
  include(GoogleTest)
  # engine/backends/cuda: the CudaBackend, its own target; the backend
  # registry (engine/backends/backend_registry.cc) is the one place that
  # knows it exists (STRATA_WITH_CUDA, private to strata_engine).
  file(GLOB backend_srcs CONFIGURE_DEPENDS
    ${CMAKE_SOURCE_DIR}/engine/backends/cuda/*.cc)
  add_library(strata_cuda_backend STATIC ${backend_srcs})
  target_include_directories(strata_cuda_backend PUBLIC ${CMAKE_SOURCE_DIR})
  target_compile_options(strata_cuda_backend PRIVATE ${STRATA_WARNINGS})
  # The backend and the engine need each other's symbols (the Backend base
  # class, the registry): CMake links the two static archives as a cycle.
  target_link_libraries(strata_cuda_backend PUBLIC strata_cuda_kernels
    strata_engine absl::status absl::statusor absl::strings)
  target_link_libraries(strata_engine PUBLIC strata_cuda_backend)
  target_compile_definitions(strata_engine PUBLIC STRATA_WITH_CUDA)

  # tests/cuda: kernel-vs-CPU and end-to-end tests; skip without a device.
  file(GLOB test_srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/cuda/*.cc)
  if(test_srcs AND TARGET GTest::gtest)
    add_executable(strata_cuda_tests ${test_srcs})
    target_include_directories(strata_cuda_tests PRIVATE ${CMAKE_SOURCE_DIR})
    target_compile_options(strata_cuda_tests PRIVATE ${STRATA_WARNINGS})
    target_compile_definitions(strata_cuda_tests PRIVATE
      STRATA_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
      STRATA_BIN_DIR="${CMAKE_BINARY_DIR}/bin")
    target_link_libraries(strata_cuda_tests PRIVATE strata_engine
      GTest::gtest GTest::gtest_main)
    # Kernel source compiled for the host under the SIMT emulator: its
    # `#pragma unroll` lines are nvcc's (GCC cannot silence them by pragma).
    set_source_files_properties(
      ${CMAKE_SOURCE_DIR}/tests/cuda/emulated_kernels_test.cc
      ${CMAKE_SOURCE_DIR}/tests/cuda/emulated_llm_int8_test.cc
      PROPERTIES COMPILE_OPTIONS -Wno-unknown-pragmas)
    gtest_discover_tests(strata_cuda_tests DISCOVERY_TIMEOUT 60
      PROPERTIES TIMEOUT 600)
  endif()

  # bench/gpu: the GPU benchmark (random ~1B Llama in memory; no downloads).
  file(GLOB bench_srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/bench/gpu/*.cc)
  if(bench_srcs)
    add_executable(strata_gpu_bench ${bench_srcs})
    target_include_directories(strata_gpu_bench PRIVATE ${CMAKE_SOURCE_DIR})
    target_compile_options(strata_gpu_bench PRIVATE ${STRATA_WARNINGS})
    target_link_libraries(strata_gpu_bench PRIVATE strata_engine
      nlohmann_json::nlohmann_json)
  endif()
endfunction()
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL strata_cuda_wire_targets)
