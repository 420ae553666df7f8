// Convolution and matrix products on a BLAS sgemm (OpenBLAS from the scipy-openblas32 wheel)
// for MindSpore's CPU backend, as "aot" Custom ops.
//
// Conv (NCHW, groups 1, dilation 1), per image n, in one of two forms:
// - Strided (im2col): y_n [O, Ho*Wo] = w [O, C*Kh*Kw] @ cols_n, where cols_n [C*Kh*Kw, Ho*Wo]
//   (row (c*Kh + ky)*Kw + kx, column i*Wo + j) holds the input pixel
//   (i*sh - ph + ky, j*sw - pw + kx), zero outside the image. The gradients are
//   dcols_n = w^T @ dy_n, scattered back into dx_n (col2im), and dw = sum_n dy_n @ cols_n^T.
//   A 1x1 conv with stride 1 and no padding has cols_n = x_n, so it is one sgemm per image.
//   Otherwise the columns are built a band of output rows at a time into a per-thread buffer
//   (kBandBytes): the buffer stays cache-warm and is faulted in once per process, where a
//   whole image's columns can reach 175 MB (protonet at 138x138).
// - Stride 1 (grid): with x_n zero-padded to xp_n [C, Hp, Wp], output pixel (i, j) sits at
//   grid column q = i*Wp + j and tap (ky, kx) reads xp_n at column q + ky*Wp + kx, so each tap
//   is a plain product w_tap [O, C] @ xp_n[:, ky*Wp + kx:] (row stride Hp*Wp) accumulated
//   into y_grid [O, Ho*Wp]; the columns j >= Wo are computed and dropped. No columns are
//   copied (im2col wrote Kh*Kw times the input per image), and the data gradient is itself a
//   stride-1 conv: dy padded by (Kh-1-ph, Kw-1-pw) with w flipped and transposed per tap.
//   dw_tap = sum_n dy_grid_n @ xp_n[:, shift:]^T, dy_grid being dy_n on the grid, zero at j >= Wo.
// Threads: one OpenMP team of kernel_threads() (threads.h) does everything. A product is cut
// into a fixed number of pieces along its longer output side (the same on any team, and so
// are the results: see kParallelMacs), each piece a single-threaded sgemm; a batch of
// products is shared out by whole products; im2col / col2im split channels, so a thread owns
// the planes it writes. OpenBLAS's own thread pool is switched off when the library loads:
// its threads spin-wait beside OpenMP's and MindSpore's, and on 2 cores a 1x1 conv ran 4x
// slower with it than on one thread.
// geometry [4] int32 = (stride_h, stride_w, pad_h, pad_w), read on the host.
// Every function has the MindSpore aot signature; params = inputs then outputs.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "threads.h"

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

// Scratch buffers of the calling thread, grown on demand and kept for the next call (the
// team's threads share the caller's). Each slot is one role, so buffers in use together differ.
enum ScratchSlot { kColumns, kGrid, kTaps, kScratchSlots };

float* scratch(ScratchSlot slot, int64_t floats) {
  thread_local std::vector<float> buffers[kScratchSlots];
  std::vector<float>& buffer = buffers[slot];
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
#pragma omp parallel for schedule(static) num_threads(kernel_threads())
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
#pragma omp parallel for schedule(static) num_threads(kernel_threads())
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

// How work is cut never depends on the number of threads: OpenBLAS's sums depend on the shape
// of the product it is given, so pieces that followed the team's size made a run on two
// threads differ in the last bits from one on one thread (and two ranks sharing a host from
// two hosts with one rank each). Products smaller than this many multiply-adds are one piece:
// a fork costs more.
constexpr int64_t kParallelMacs = 1 << 18;
// Larger products are cut into this many pieces along their longer output side: an even
// share for 1, 2 and 4 threads, and pieces large enough to amortise OpenBLAS's packing.
constexpr int64_t kProductPieces = 4;
// Piece edges are multiples of this (the sgemm kernels' register tile).
constexpr int64_t kBlockAlign = 16;

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

void sgemm_block(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
                    static_cast<blasint>(n), static_cast<blasint>(k), 1.f, a,
                    static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
                    static_cast<blasint>(ldc));
}

// C [m, n] = op(A) @ op(B) + beta * C, row-major; ld* are the row strides as stored. The
// longer of m and n is cut into kProductPieces pieces, shared by the team.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m * n * k < kParallelMacs) {
    sgemm_block(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const bool split_rows = m > n;
  const int64_t side = split_rows ? m : n;
  const int64_t step = round_up((side + kProductPieces - 1) / kProductPieces, kBlockAlign);
  const int64_t pieces = (side + step - 1) / step;
#pragma omp parallel for schedule(static) num_threads(kernel_threads())
  for (int64_t piece = 0; piece < pieces; ++piece) {
    const int64_t first = piece * step, count = std::min(side, first + step) - first;
    if (split_rows) {
      sgemm_block(trans_a, trans_b, count, n, k, a + (trans_a ? first : first * lda), lda, b,
                  ldb, beta, c + first * ldc, ldc);
    } else {
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
  float* buffer = g.is_pointwise() ? nullptr : scratch(kColumns, g.patch() * band_rows * g.out_w);
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* x_n = x + n * g.channels * g.plane();
    for (int64_t row0 = 0; row0 < g.out_h; row0 += band_rows) {
      const int64_t rows = std::min(band_rows, g.out_h - row0);
      if (buffer != nullptr) im2col(g, x_n, row0, rows, buffer);
      body(n, row0, rows, buffer != nullptr ? buffer : x_n);
    }
  }
}

// A stride-1 conv of one image on the grid (see the top of the file). The data gradient is
// one too, with the roles of dy and x swapped (``data_gradient``).
struct GridConv {
  int64_t channels, height, width, out_channels, kh, kw, ph, pw;

  int64_t padded_h() const { return height + 2 * ph; }
  int64_t padded_w() const { return width + 2 * pw; }
  int64_t padded_plane() const { return padded_h() * padded_w(); }
  int64_t out_h() const { return padded_h() - kh + 1; }
  int64_t out_w() const { return padded_w() - kw + 1; }
  int64_t grid_plane() const { return out_h() * padded_w(); }
  // Grid columns up to the last output pixel; the last tap then reads the padded plane's
  // last element, so no plane is read past its end.
  int64_t columns() const { return (out_h() - 1) * padded_w() + out_w(); }
  int64_t taps() const { return kh * kw; }
  int64_t shift(int64_t tap) const { return tap / kw * padded_w() + tap % kw; }
  bool is_padded() const { return ph > 0 || pw > 0; }
  bool is_parallel() const {
    return out_channels * channels * taps() * columns() >= kParallelMacs;
  }
};

GridConv forward_grid(const ConvGeometry& g) {
  return {g.channels, g.height, g.width, g.out_channels, g.kh, g.kw, g.ph, g.pw};
}

// dx = the stride-1 conv of dy padded by (Kh-1-ph, Kw-1-pw) with the taps flipped and the
// channels transposed (``tap_weights``); it needs ph < Kh and pw < Kw.
GridConv data_gradient(const ConvGeometry& g) {
  return {g.out_channels, g.out_h, g.out_w, g.channels, g.kh, g.kw, g.kh - 1 - g.ph,
          g.kw - 1 - g.pw};
}

bool runs_on_grid(const ConvGeometry& g) { return g.sh == 1 && g.sw == 1 && !g.is_pointwise(); }

// taps [Kh*Kw, O, C] (tap t = ky*Kw + kx) of w [O, C, Kh, Kw]; ``for_data_gradient``: taps
// [Kh*Kw, C, O] of the flipped kernel, tap t holding w[:, :, Kh-1-ky, Kw-1-kx]^T.
void tap_weights(const ConvGeometry& g, const float* w, bool for_data_gradient, float* taps) {
  const int64_t count = g.kh * g.kw;
  for (int64_t o = 0; o < g.out_channels; ++o) {
    for (int64_t c = 0; c < g.channels; ++c) {
      const float* kernel = w + (o * g.channels + c) * count;
      for (int64_t t = 0; t < count; ++t) {
        if (for_data_gradient) {
          taps[((count - 1 - t) * g.channels + c) * g.out_channels + o] = kernel[t];
        } else {
          taps[(t * g.out_channels + o) * g.channels + c] = kernel[t];
        }
      }
    }
  }
}

// xp [C, Hp, Wp] = x_n [C, H, W] with ph zero rows above and below and pw zero columns on
// each side. Inside a parallel region: the team splits the channels.
void pad_planes(const GridConv& g, const float* x_n, float* xp) {
  const int64_t wp = g.padded_w();
#pragma omp for schedule(static)
  for (int64_t c = 0; c < g.channels; ++c) {
    float* out = xp + c * g.padded_plane();
    std::fill(out, out + g.ph * wp, 0.f);
    for (int64_t i = 0; i < g.height; ++i) {
      float* row = out + (g.ph + i) * wp;
      std::fill(row, row + g.pw, 0.f);
      std::memcpy(row + g.pw, x_n + (c * g.height + i) * g.width, g.width * sizeof(float));
      std::fill(row + g.pw + g.width, row + wp, 0.f);
    }
    std::fill(out + (g.ph + g.height) * wp, out + g.padded_plane(), 0.f);
  }
}

// Grid columns per block of work: the block's slice of y_grid (O x block) stays in L2 while
// the taps accumulate into it; at least kGridBlocks blocks, for balance (a count, not one
// per thread: see kParallelMacs).
constexpr int64_t kGridBlockBytes = 256 << 10;
constexpr int64_t kGridBlocks = 2 * kProductPieces;

int64_t grid_block(const GridConv& g) {
  const int64_t by_cache = kGridBlockBytes / (g.out_channels * static_cast<int64_t>(sizeof(float)));
  const int64_t by_count = (g.columns() + kGridBlocks - 1) / kGridBlocks;
  return round_up(std::max(kBlockAlign, std::min(by_cache, by_count)), kBlockAlign);
}

// y_n [O, Ho, Wo] of one image from its padded planes xp [C, Hp, Wp] and taps [Kh*Kw, O, C],
// through y_grid [O, Ho*Wp]; each block of grid columns goes to y_n while it is in cache.
// Inside a parallel region: the team splits the blocks.
void grid_products(const GridConv& g, const float* xp, const float* taps, float* y_grid,
                   float* y_n) {
  const int64_t wp = g.padded_w(), out_w = g.out_w(), columns = g.columns();
  const int64_t block = grid_block(g), blocks = (columns + block - 1) / block;
#pragma omp for schedule(dynamic)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * block, end = std::min(columns, first + block);
    for (int64_t t = 0; t < g.taps(); ++t) {
      sgemm_block(false, false, g.out_channels, end - first, g.channels,
                  taps + t * g.out_channels * g.channels, g.channels, xp + g.shift(t) + first,
                  g.padded_plane(), t == 0 ? 0.f : 1.f, y_grid + first, g.grid_plane());
    }
    for (int64_t o = 0; o < g.out_channels; ++o) {
      const float* grid = y_grid + o * g.grid_plane();
      float* out = y_n + o * g.out_h() * out_w;
      for (int64_t i = first / wp; i * wp < end; ++i) {
        const int64_t j0 = std::max(first - i * wp, int64_t{0});
        const int64_t j1 = std::min(end - i * wp, out_w);
        if (j0 < j1) {
          std::memcpy(out + i * out_w + j0, grid + i * wp + j0, (j1 - j0) * sizeof(float));
        }
      }
    }
  }
}

// y_n [O, Ho, Wo] = the stride-1 conv ``g`` of x_n [C, H, W] with taps [Kh*Kw, O, C].
void grid_conv(const GridConv& g, const float* x_n, const float* taps, float* y_n) {
  float* xp = g.is_padded() ? scratch(kColumns, g.channels * g.padded_plane()) : nullptr;
  float* y_grid = scratch(kGrid, g.out_channels * g.grid_plane());
#pragma omp parallel num_threads(kernel_threads()) if (g.is_parallel())
  {
    if (xp != nullptr) pad_planes(g, x_n, xp);
    grid_products(g, xp != nullptr ? xp : x_n, taps, y_grid, y_n);
  }
}

// Every image of the batch through the stride-1 conv of ``g`` (y = conv(x)) or, with
// ``for_data_gradient``, through its data gradient (dx from dy); taps from w (``tap_weights``).
void grid_conv_batch(const ConvGeometry& g, bool for_data_gradient, const float* w,
                     const float* in, float* out) {
  const GridConv grid = for_data_gradient ? data_gradient(g) : forward_grid(g);
  float* taps = scratch(kTaps, g.out_channels * g.patch());
  tap_weights(g, w, for_data_gradient, taps);
  const int64_t in_image = grid.channels * grid.height * grid.width;
  const int64_t out_image = grid.out_channels * grid.out_h() * grid.out_w();
  for (int64_t n = 0; n < g.batch; ++n) {
    grid_conv(grid, in + n * in_image, taps, out + n * out_image);
  }
}

// dy_grid [O, Ho*Wp] = dy_n [O, Ho, Wo] on the grid, zero at the columns j >= Wo. Inside a
// parallel region: the team splits the channels.
void spread_to_grid(const GridConv& g, const float* dy_n, float* dy_grid) {
  const int64_t wp = g.padded_w(), out_w = g.out_w();
#pragma omp for schedule(static)
  for (int64_t o = 0; o < g.out_channels; ++o) {
    for (int64_t i = 0; i < g.out_h(); ++i) {
      float* row = dy_grid + o * g.grid_plane() + i * wp;
      std::memcpy(row, dy_n + (o * g.out_h() + i) * out_w, out_w * sizeof(float));
      std::fill(row + out_w, row + wp, 0.f);
    }
  }
}

// dw [O, C, Kh, Kw] of the stride-1 conv of ``g``: per tap, the sum over images of
// dy_grid_n @ xp_n[:, shift:]^T, accumulated in tap order [Kh*Kw, O, C] and then laid out.
void grid_weight_gradient(const ConvGeometry& g, const float* x, const float* dy, float* dw) {
  const GridConv grid = forward_grid(g);
  float* xp = grid.is_padded() ? scratch(kColumns, g.channels * grid.padded_plane()) : nullptr;
  float* dy_grid = scratch(kGrid, g.out_channels * grid.grid_plane());
  float* dw_taps = scratch(kTaps, g.out_channels * g.patch());
  const int64_t tap_size = g.out_channels * g.channels;
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* x_n = x + n * g.channels * g.plane();
#pragma omp parallel num_threads(kernel_threads()) if (grid.is_parallel())
    {
      if (xp != nullptr) pad_planes(grid, x_n, xp);
      spread_to_grid(grid, dy + n * g.out_channels * g.out_plane(), dy_grid);
    }
    for (int64_t t = 0; t < grid.taps(); ++t) {
      sgemm(false, true, g.out_channels, g.channels, grid.columns(), dy_grid,
            grid.grid_plane(), (xp != nullptr ? xp : x_n) + grid.shift(t), grid.padded_plane(),
            n == 0 ? 0.f : 1.f, dw_taps + t * tap_size, g.channels);
    }
  }
  for (int64_t o = 0; o < g.out_channels; ++o) {
    for (int64_t c = 0; c < g.channels; ++c) {
      for (int64_t t = 0; t < grid.taps(); ++t) {
        dw[(o * g.channels + c) * grid.taps() + t] = dw_taps[t * tap_size + o * g.channels + c];
      }
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
  if (runs_on_grid(g)) {
    grid_conv_batch(g, false, w, x, y);
    return 0;
  }
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
  if (runs_on_grid(g) && g.ph < g.kh && g.pw < g.kw) {
    grid_conv_batch(g, true, w, dy, dx);
    return 0;
  }
  std::fill(dx, dx + g.batch * g.channels * g.plane(), 0.f);
  const int64_t band_rows = g.band_rows();
  float* dcols = scratch(kColumns, g.patch() * band_rows * g.out_w);
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
  if (runs_on_grid(g)) {
    grid_weight_gradient(g, x, dy, dw);
    return 0;
  }
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
  auto product = [&](int64_t i, auto gemm) {
    gemm(trans_a, trans_b, m, n, k, a + i * a_rows * a_cols, a_cols, b + i * b_rows * b_cols,
         b_cols, 0.f, c + i * m * n, n);
  };
  // A batch goes to the threads as whole products (Winograd's 16): each sgemm packs its
  // operands once, where cutting every product in pieces packs them once per piece
  // (R-50++'s Winograd products ran at 91-98 GMAC/s so against 76-90 on 2 cores).
  if (batch > 1 && batch * m * n * k >= kParallelMacs) {
#pragma omp parallel for schedule(static) num_threads(kernel_threads())
    for (int64_t i = 0; i < batch; ++i) product(i, sgemm_block);
  } else {
    for (int64_t i = 0; i < batch; ++i) product(i, sgemm);
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
