#pragma once
// Stand-in for the header CUDA builds of torch generate; the CPU wheel ships without it. Used only to
// type-check the CUDA glue against a CPU torch (see CMakeLists.txt), never to link.
#define C10_CUDA_BUILD_SHARED_LIBS
