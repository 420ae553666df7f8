// Convolution and matrix products on a BLAS sgemm (OpenBLAS from the scipy-openblas32 wheel)
// for MindSpore's CPU backend, as "aot" Custom ops.
//
// Conv (NCHW, groups 1, dilation 1): per image n, y_n [O, Ho*Wo] = w [O, C*Kh*Kw] @ cols_n,
// where cols_n [C*Kh*Kw, Ho*Wo] (row (c*Kh + ky)*Kw + kx, column i*Wo + j) holds the input
// pixel (i*sh - ph + ky, j*sw - pw + kx), zero outside the image. The gradients are
//   dcols_n = w^T @ dy_n, scattered back into dx_n (col2im), and dw = sum_n dy_n @ cols_n^T.
// A 1x1 conv with stride 1 and no padding has cols_n = x_n, so it is one sgemm per image.
// Otherwise the columns are built a band of output rows at a time into a per-thread buffer
// (kBandBytes): the buffer stays cache-warm and is faulted in once per process, where a whole
// image's columns can reach 175 MB (protonet at 138x138).
//
// Threads: one OpenMP team does everything. A product is cut into one block per thread along
// its longer output side, each block a single-threaded sgemm; im2col / col2im split channels,
// so a thread owns the planes it writes. OpenBLAS's own thread pool is switched off when the
// library loads: its threads spin-wait beside OpenMP's and MindSpore's, and on 2 cores a
// 1x1 conv ran 4x slower with it than on one thread.
// geometry [4] int32 = (stride_h, stride_w, pad_h, pad_w), read on the host.
// Every function has the MindSpore aot signature; params = inputs then outputs.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Column buffer per band: big enough that the weight-gradient sgemm (inner dimension = the
// band's columns) is not dominated by re-reading dw, small enough to stay in L3.
constexpr int64_t kBandBytes = 8 << 20;

struct ConvGeometry {
  int64_t batch, channels, height, width, out_channels, kh, kw, sh, sw, ph, pw, out_h, out_w;

  ConvGeometry(const int64_t* x, const int64_t* w, const void* geometry) {
    const int32_t* g = static_cast<const int32_t*>(geometry);
    batch = x[0];
    channels = x[1];
    height = x[2];
    width = x[3];
    out_channels = w[0];
    kh = w[2];
    kw = w[3];
    sh = g[0];
    sw = g[1];
    ph = g[2];
    pw = g[3];
    out_h = (height + 2 * ph - kh) / sh + 1;
    out_w = (width + 2 * pw - kw) / sw + 1;
  }
  int64_t plane() const { return height * width; }
  int64_t out_plane() const { return out_h * out_w; }
  int64_t patch() const { return channels * kh * kw; }  // rows of cols, columns of w
  bool is_pointwise() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  }
  // Output rows per band: as many as fit kBandBytes of columns, at least one.
  int64_t band_rows() const {
    const int64_t row_bytes = patch() * out_w * static_cast<int64_t>(sizeof(float));
    return std::max<int64_t>(1, std::min<int64_t>(out_h, kBandBytes / row_bytes));
  }
};

float* band_buffer(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

// Output columns j whose input column j*sw - pw + kx lies in [0, width): [first, last).
void valid_columns(const ConvGeometry& g, int64_t kx, int64_t* first, int64_t* last) {
  const int64_t offset = kx - g.pw;  // input column of output column 0
  *first = offset >= 0 ? 0 : (-offset + g.sw - 1) / g.sw;
  *last = g.width - offset <= 0 ? 0 : std::min(g.out_w, (g.width - offset + g.sw - 1) / g.sw);
  *first = std::min(*first, *last);
}

// cols [patch, rows*Wo] of output rows [row0, row0 + rows) of image x_n [C, H, W].
void im2col(const ConvGeometry& g, const float* x_n, int64_t row0, int64_t rows, float* cols) {
  const int64_t band = rows * g.out_w;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < g.channels; ++c) {
    const float* plane = x_n + c * g.plane();
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        float* out = cols + ((c * g.kh + ky) * g.kw + kx) * band;
        int64_t first, last;
        valid_columns(g, kx, &first, &last);
        for (int64_t r = 0; r < rows; ++r, out += g.out_w) {
          const int64_t y = (row0 + r) * g.sh - g.ph + ky;
          if (y < 0 || y >= g.height) {
            std::fill(out, out + g.out_w, 0.f);
            continue;
          }
          const float* in = plane + y * g.width + kx - g.pw;
          std::fill(out, out + first, 0.f);
          if (g.sw == 1) {
            std::memcpy(out + first, in + first, (last - first) * sizeof(float));
          } else {
            for (int64_t j = first; j < last; ++j) out[j] = in[j * g.sw];
          }
          std::fill(out + last, out + g.out_w, 0.f);
        }
      }
    }
  }
}

// dx_n [C, H, W] += the columns' gradient dcols [patch, rows*Wo] (the adjoint of im2col).
void col2im(const ConvGeometry& g, const float* dcols, int64_t row0, int64_t rows, float* dx_n) {
  const int64_t band = rows * g.out_w;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < g.channels; ++c) {
    float* plane = dx_n + c * g.plane();
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const float* in = dcols + ((c * g.kh + ky) * g.kw + kx) * band;
        int64_t first, last;
        valid_columns(g, kx, &first, &last);
        for (int64_t r = 0; r < rows; ++r, in += g.out_w) {
          const int64_t y = (row0 + r) * g.sh - g.ph + ky;
          if (y < 0 || y >= g.height) continue;
          float* out = plane + y * g.width + kx - g.pw;
          if (g.sw == 1) {
            for (int64_t j = first; j < last; ++j) out[j] += in[j];
          } else {
            for (int64_t j = first; j < last; ++j) out[j * g.sw] += in[j];
          }
        }
      }
    }
  }
}

// Every sgemm call runs on its caller's thread (see "Threads" above).
__attribute__((constructor)) void single_threaded_blas() { scipy_openblas_set_num_threads(1); }

// Products smaller than this many multiply-adds run on one thread: a fork costs more.
constexpr int64_t kParallelMacs = 1 << 18;
// Block edges are multiples of this (the sgemm kernels' register tile).
constexpr int64_t kBlockAlign = 16;

void sgemm_block(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
                    static_cast<blasint>(n), static_cast<blasint>(k), 1.f, a,
                    static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
                    static_cast<blasint>(ldc));
}

// C [m, n] = op(A) @ op(B) + beta * C, row-major; ld* are the row strides as stored. The
// longer of m and n is cut into one block per OpenMP thread.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int threads = omp_get_max_threads();
  if (threads == 1 || m * n * k < kParallelMacs) {
    sgemm_block(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const bool split_rows = m > n;
  const int64_t side = split_rows ? m : n;
#pragma omp parallel num_threads(threads)
  {
    const int64_t parts = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t step = (side + parts * kBlockAlign - 1) / (parts * kBlockAlign) * kBlockAlign;
    const int64_t first = std::min(side, t * step), count = std::min(side, first + step) - first;
    if (count > 0 && split_rows) {
      sgemm_block(trans_a, trans_b, count, n, k, a + (trans_a ? first : first * lda), lda, b,
                  ldb, beta, c + first * ldc, ldc);
    } else if (count > 0) {
      sgemm_block(trans_a, trans_b, m, count, k, a, lda, b + (trans_b ? first * ldb : first),
                  ldb, beta, c + first, ldc);
    }
  }
}

// Calls body(n, row0, rows, cols) for every band of every image, cols = the band's columns
// (x_n itself for a pointwise conv, whose single band is the whole image).
template <typename Body>
void for_each_band(const ConvGeometry& g, const float* x, Body body) {
  const int64_t band_rows = g.is_pointwise() ? g.out_h : g.band_rows();
  float* buffer = g.is_pointwise() ? nullptr : band_buffer(g.patch() * band_rows * g.out_w);
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* x_n = x + n * g.channels * g.plane();
    for (int64_t row0 = 0; row0 < g.out_h; row0 += band_rows) {
      const int64_t rows = std::min(band_rows, g.out_h - row0);
      if (buffer != nullptr) im2col(g, x_n, row0, rows, buffer);
      body(n, row0, rows, buffer != nullptr ? buffer : x_n);
    }
  }
}

}  // namespace

// inputs: x [N, C, H, W], w [O, C, Kh, Kw], geometry [4]; output: y [N, O, Ho, Wo].
extern "C" int ConvGemm(int nparam, void** params, int* ndims, int64_t** shapes,
                        const char** dtypes, void* stream, void* extra) {
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[3]);
  const ConvGeometry g(shapes[0], shapes[1], params[2]);
  for_each_band(g, x, [&](int64_t n, int64_t row0, int64_t rows, const float* cols) {
    const int64_t band = rows * g.out_w;
    sgemm(false, false, g.out_channels, band, g.patch(), w, g.patch(), cols, band, 0.f,
          y + n * g.out_channels * g.out_plane() + row0 * g.out_w, g.out_plane());
  });
  return 0;
}

// inputs: dy [N, O, Ho, Wo], w [O, C, Kh, Kw], x [N, C, H, W] (only its shape is read),
// geometry [4]; output: dx [N, C, H, W].
extern "C" int ConvGemmGradInput(int nparam, void** params, int* ndims, int64_t** shapes,
                                 const char** dtypes, void* stream, void* extra) {
  const float* dy = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  float* dx = static_cast<float*>(params[4]);
  const ConvGeometry g(shapes[2], shapes[1], params[3]);
  if (g.is_pointwise()) {
    for (int64_t n = 0; n < g.batch; ++n) {
      sgemm(true, false, g.channels, g.plane(), g.out_channels, w, g.channels,
            dy + n * g.out_channels * g.out_plane(), g.plane(), 0.f,
            dx + n * g.channels * g.plane(), g.plane());
    }
    return 0;
  }
  std::fill(dx, dx + g.batch * g.channels * g.plane(), 0.f);
  const int64_t band_rows = g.band_rows();
  float* dcols = band_buffer(g.patch() * band_rows * g.out_w);
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t row0 = 0; row0 < g.out_h; row0 += band_rows) {
      const int64_t rows = std::min(band_rows, g.out_h - row0);
      const int64_t band = rows * g.out_w;
      sgemm(true, false, g.patch(), band, g.out_channels, w, g.patch(),
            dy + n * g.out_channels * g.out_plane() + row0 * g.out_w, g.out_plane(), 0.f,
            dcols, band);
      col2im(g, dcols, row0, rows, dx + n * g.channels * g.plane());
    }
  }
  return 0;
}

// inputs: x [N, C, H, W], dy [N, O, Ho, Wo], w [O, C, Kh, Kw] (only its shape is read),
// geometry [4]; output: dw [O, C, Kh, Kw].
extern "C" int ConvGemmGradWeight(int nparam, void** params, int* ndims, int64_t** shapes,
                                  const char** dtypes, void* stream, void* extra) {
  const float* x = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[1]);
  float* dw = static_cast<float*>(params[4]);
  const ConvGeometry g(shapes[0], shapes[2], params[3]);
  bool first = true;
  for_each_band(g, x, [&](int64_t n, int64_t row0, int64_t rows, const float* cols) {
    const int64_t band = rows * g.out_w;
    sgemm(false, true, g.out_channels, g.patch(), band,
          dy + n * g.out_channels * g.out_plane() + row0 * g.out_w, g.out_plane(), cols, band,
          first ? 0.f : 1.f, dw, g.patch());
    first = false;
  });
  return 0;
}

// Batched matrix products for the C++ kernels' own GEMMs. inputs: a [..., M, K] (or
// [..., K, M] transposed), b [..., K, N] (or [..., N, K]); output: c [..., M, N]. The leading
// dimensions (the batch) are the same for a, b and c, and may be absent.
namespace {

int BatchedProduct(void** params, int* ndims, int64_t** shapes, bool trans_a, bool trans_b) {
  const float* a = static_cast<const float*>(params[0]);
  const float* b = static_cast<const float*>(params[1]);
  float* c = static_cast<float*>(params[2]);
  const int rank = ndims[0];
  int64_t batch = 1;
  for (int d = 0; d < rank - 2; ++d) batch *= shapes[0][d];
  const int64_t a_rows = shapes[0][rank - 2], a_cols = shapes[0][rank - 1];
  const int64_t b_rows = shapes[1][rank - 2], b_cols = shapes[1][rank - 1];
  const int64_t m = trans_a ? a_cols : a_rows, k = trans_a ? a_rows : a_cols;
  const int64_t n = trans_b ? b_rows : b_cols;
  for (int64_t i = 0; i < batch; ++i) {
    sgemm(trans_a, trans_b, m, n, k, a + i * a_rows * a_cols, a_cols, b + i * b_rows * b_cols,
          b_cols, 0.f, c + i * m * n, n);
  }
  return 0;
}

}  // namespace

extern "C" int MatMulNN(int nparam, void** params, int* ndims, int64_t** shapes,
                        const char** dtypes, void* stream, void* extra) {
  return BatchedProduct(params, ndims, shapes, false, false);
}

extern "C" int MatMulNT(int nparam, void** params, int* ndims, int64_t** shapes,
                        const char** dtypes, void* stream, void* extra) {
  return BatchedProduct(params, ndims, shapes, false, true);
}

extern "C" int MatMulTN(int nparam, void** params, int* ndims, int64_t** shapes,
                        const char** dtypes, void* stream, void* extra) {
  return BatchedProduct(params, ndims, shapes, true, false);
}
