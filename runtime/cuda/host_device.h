// QC_HD: marks a function that both nvcc's device code and the host compiler build, so a kernel's
// per-thread body can be written once and run on the CPU by tests (passes/cuda/gptq_block.h,
// calibrate/cuda/stats_columns.h). Plain C++ without nvcc.
#pragma once

#ifdef __CUDACC__
#define QC_HD __host__ __device__
#else
#define QC_HD
#endif
