# Locate the installed torch without find_package(Torch): Caffe2's CMake config appends its own
# -gencode list to CUDA builds (compute_50 and friends, which nvcc 13 rejects) and pulls in far more
# than an extension needs. We only need headers, a few libraries and the C++ ABI flag.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(int(torch.version.cuda is not None)); print(torch.__version__)"
  OUTPUT_VARIABLE _torch_info
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "genrec_ext needs torch installed before it is built (pip install torch==2.13.0), "
                      "and pip's --no-build-isolation so the build sees it")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 TORCH_ROOT)
list(GET _torch_info 1 _torch_abi)
list(GET _torch_info 2 TORCH_HAS_CUDA)
list(GET _torch_info 3 TORCH_VERSION)
message(STATUS "genrec_ext: torch ${TORCH_VERSION} at ${TORCH_ROOT} (CUDA: ${TORCH_HAS_CUDA})")

set(TORCH_INCLUDE_DIRS "${TORCH_ROOT}/include" "${TORCH_ROOT}/include/torch/csrc/api/include")
set(TORCH_LIBRARY_DIR "${TORCH_ROOT}/lib")
set(TORCH_DEFINITIONS _GLIBCXX_USE_CXX11_ABI=${_torch_abi} TORCH_EXTENSION_NAME=_C)

function(_genrec_torch_lib out name)
  find_library(_lib_${name} NAMES ${name} PATHS "${TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH REQUIRED)
  set(${out} ${_lib_${name}} PARENT_SCOPE)
endfunction()
_genrec_torch_lib(_c10 c10)
_genrec_torch_lib(_torch torch)
_genrec_torch_lib(_torch_cpu torch_cpu)
set(TORCH_CPU_LIBRARIES ${_c10} ${_torch} ${_torch_cpu})
if(TORCH_HAS_CUDA)
  _genrec_torch_lib(_c10_cuda c10_cuda)
  _genrec_torch_lib(_torch_cuda torch_cuda)
  set(TORCH_CUDA_LIBRARIES ${_c10_cuda} ${_torch_cuda})
endif()
