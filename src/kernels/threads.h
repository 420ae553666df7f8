// The team size of every parallel region of a kernel library. It cannot come from
// OMP_NUM_THREADS: `import mindspore` sets that to 1 in the C environment when it is unset, so
// every process a MindSpore process starts (msrun's ranks, the benchmarks' children, the
// tests' subprocesses) would run the kernels on one thread. Python sets it from this rank's
// share of the usable CPUs (src.kernels.build.set_kernel_threads); until then it is every
// CPU OpenMP sees.
#pragma once
#include <omp.h>

inline int& kernel_threads() {
  static int threads = omp_get_num_procs();
  return threads;
}

extern "C" void SetKernelThreads(int threads) { kernel_threads() = threads > 0 ? threads : 1; }
