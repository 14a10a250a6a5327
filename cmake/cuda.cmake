# The GPU path: CUDA language, the CUDA runtime, and NCCL when it is found.
# Sets RINGATTN_HAVE_CUDA and RINGATTN_HAVE_NCCL.
#   RINGATTN_CUDA=OFF   no GPU code at all (the stubs say so at run time)
#   RINGATTN_CUDA=AUTO  on where nvcc is found (check_language)
#   RINGATTN_CUDA=ON    nvcc required
# NCCL is searched beside the toolkit and in the python wheel nvidia-nccl-cu*
# (site-packages/nvidia/nccl/{include,lib}); without it the NCCL backend is
# left out (make_nccl throws saying so) and the rest of the GPU path builds.
set(RINGATTN_HAVE_CUDA OFF)
set(RINGATTN_HAVE_NCCL OFF)
if(NOT RINGATTN_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(RINGATTN_HAVE_CUDA ON)
  elseif(RINGATTN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "RINGATTN_CUDA=ON but no CUDA compiler (nvcc) was found: set CUDACXX or "
                        "CMAKE_CUDA_COMPILER, or configure with -DRINGATTN_CUDA=AUTO/OFF")
  endif()
endif()

if(RINGATTN_HAVE_CUDA)
  set(_nccl_hints ${CUDAToolkit_LIBRARY_ROOT} ${CUDAToolkit_TARGET_DIR})
  find_program(_ringattn_python python3)
  if(_ringattn_python)
    execute_process(COMMAND ${_ringattn_python} -c
      "import nvidia.nccl as m; print(list(m.__path__)[0])"
      OUTPUT_VARIABLE _nccl_py OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_nccl_py)
      list(APPEND _nccl_hints ${_nccl_py})
    endif()
  endif()
  file(GLOB _nccl_globs /usr/local/lib/python3*/dist-packages/nvidia/nccl
       /usr/lib/python3/dist-packages/nvidia/nccl /usr/local/lib/python3*/site-packages/nvidia/nccl)
  list(APPEND _nccl_hints ${_nccl_globs})
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ${_nccl_hints}
            PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${CUDAToolkit_LIBRARY_DIR} ${_nccl_hints}
               PATH_SUFFIXES lib lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(RINGATTN_HAVE_NCCL ON)
  endif()
  message(STATUS "ringattn: CUDA ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                 "${CMAKE_CUDA_ARCHITECTURES})")
  if(RINGATTN_HAVE_NCCL)
    message(STATUS "ringattn: NCCL backend ON (${NCCL_LIBRARY})")
  else()
    message(STATUS "ringattn: NCCL backend OFF (nccl.h / libnccl not found; building without it)")
  endif()
else()
  message(STATUS "ringattn: CUDA OFF (RINGATTN_CUDA=${RINGATTN_CUDA})")
endif()
