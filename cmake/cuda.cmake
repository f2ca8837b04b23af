# The CUDA backend: built when nvcc is found, skipped otherwise (the CPU build
# never needs it). Filled in by the CUDA backend issue.
include(CheckLanguage)
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  message(STATUS "strata: CUDA compiler found (${CMAKE_CUDA_COMPILER}); CUDA backend pending")
else()
  message(STATUS "strata: no CUDA compiler; building the CPU backend only")
endif()
