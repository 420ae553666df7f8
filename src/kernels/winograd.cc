// Winograd F(2x2, 3x3) transforms for MindSpore's CPU backend, as "aot" Custom ops: a 3x3
// conv, stride 1, padding 1, as 16 matrix products between the transforms.
//
// The image is cut into 2x2 output tiles, tile (i, j) of image n has column
// n*T + i*ceil(W/2) + j, T = ceil(H/2)*ceil(W/2). Its 4x4 input patch d starts at
// (2i - 1, 2j - 1) (zeros outside the image) and becomes V = B^T d B; with U = G g G^T for
// the 3x3 kernel g, the conv output tile is A^T (U . V) A, the 16 products summed over the
// input channels by the matrix products M[k] = U[k] @ V[k].
//   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
//   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
// Layouts: V [16, C, N*T], M [16, O, N*T], element k = 4*row + column of the tile.
// Every function has the MindSpore aot signature; params = inputs then outputs.
#include "threads.h"

#include <algorithm>
#include <cstdint>

namespace {

int64_t num_tiles(int64_t side) { return (side + 1) / 2; }

// t = B^T d along one axis, d and t strided by `step`.
inline void input_1d(const float* d, float* t, int step) {
  const float d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step];
  t[0] = d0 - d2;
  t[step] = d1 + d2;
  t[2 * step] = d2 - d1;
  t[3 * step] = d1 - d3;
}

// d = B t, the adjoint of input_1d.
inline void input_1d_adjoint(const float* t, float* d, int step) {
  const float t0 = t[0], t1 = t[step], t2 = t[2 * step], t3 = t[3 * step];
  d[0] = t0;
  d[step] = t1 - t2 + t3;
  d[2 * step] = t1 + t2 - t0;
  d[3 * step] = -t3;
}

// y[2] = A^T m[4] along one axis.
inline void output_1d(const float* m, float* y, int m_step, int y_step) {
  const float m0 = m[0], m1 = m[m_step], m2 = m[2 * m_step], m3 = m[3 * m_step];
  y[0] = m0 + m1 + m2;
  y[y_step] = m1 - m2 - m3;
}

// m[4] = A y[2], the adjoint of output_1d.
inline void output_1d_adjoint(const float* y, float* m, int y_step, int m_step) {
  const float y0 = y[0], y1 = y[y_step];
  m[0] = y0;
  m[m_step] = y0 + y1;
  m[2 * m_step] = y0 - y1;
  m[3 * m_step] = -y1;
}

struct Tiling {
  int64_t batch, channels, height, width, tiles_y, tiles_x;
  Tiling(int64_t n, int64_t c, int64_t h, int64_t w)
      : batch(n), channels(c), height(h), width(w), tiles_y(num_tiles(h)), tiles_x(num_tiles(w)) {}
  int64_t columns() const { return batch * tiles_y * tiles_x; }
  // Offset of tile (n, i, j) of channel c in a [16, C, N*T] array; element k adds
  // k * element_stride().
  int64_t column(int64_t n, int64_t c, int64_t i, int64_t j) const {
    return c * columns() + (n * tiles_y + i) * tiles_x + j;
  }
  int64_t element_stride() const { return channels * columns(); }
  const float* plane(const float* images, int64_t n, int64_t c) const {
    return images + (n * channels + c) * height * width;
  }
  float* plane(float* images, int64_t n, int64_t c) const {
    return images + (n * channels + c) * height * width;
  }
};

// Calls body(n, c, i, j) for every tile (i, j) of every plane (n, c); planes are split
// between threads, so a thread owns the tiles of its planes.
template <typename Body>
void for_each_tile(const Tiling& tiling, Body body) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(kernel_threads())
  for (int64_t n = 0; n < tiling.batch; ++n) {
    for (int64_t c = 0; c < tiling.channels; ++c) {
      for (int64_t i = 0; i < tiling.tiles_y; ++i) {
        for (int64_t j = 0; j < tiling.tiles_x; ++j) body(n, c, i, j);
      }
    }
  }
}

}  // namespace

// inputs: x [N, C, H, W]; output: V [16, C, N*T].
extern "C" int WinogradInput(int nparam, void** params, int* ndims, int64_t** shapes,
                             const char** dtypes, void* stream, void* extra) {
  const float* x = static_cast<const float*>(params[0]);
  float* v = static_cast<float*>(params[1]);
  const Tiling tiling(shapes[0][0], shapes[0][1], shapes[0][2], shapes[0][3]);
  for_each_tile(tiling, [&](int64_t n, int64_t c, int64_t i, int64_t j) {
    const float* plane = tiling.plane(x, n, c);
    float d[16];
    for (int r = 0; r < 4; ++r) {
      const int64_t y = 2 * i - 1 + r;
      for (int s = 0; s < 4; ++s) {
        const int64_t xx = 2 * j - 1 + s;
        const bool inside = y >= 0 && y < tiling.height && xx >= 0 && xx < tiling.width;
        d[4 * r + s] = inside ? plane[y * tiling.width + xx] : 0.f;
      }
    }
    for (int s = 0; s < 4; ++s) input_1d(d + s, d + s, 4);
    for (int r = 0; r < 4; ++r) input_1d(d + 4 * r, d + 4 * r, 1);
    float* column = v + tiling.column(n, c, i, j);
    for (int k = 0; k < 16; ++k) column[k * tiling.element_stride()] = d[k];
  });
  return 0;
}

// Gradient of WinogradInput. inputs: dV [16, C, N*T], shape [N, H, W] (any dtype, only its
// shape is read); output: dx [N, C, H, W].
extern "C" int WinogradInputGrad(int nparam, void** params, int* ndims, int64_t** shapes,
                                 const char** dtypes, void* stream, void* extra) {
  const float* dv = static_cast<const float*>(params[0]);
  float* dx = static_cast<float*>(params[2]);
  const Tiling tiling(shapes[1][0], shapes[0][1], shapes[1][1], shapes[1][2]);
  std::fill(dx, dx + tiling.batch * tiling.channels * tiling.height * tiling.width, 0.f);
  // Overlapping patches of a plane are summed by the thread that owns the plane.
  for_each_tile(tiling, [&](int64_t n, int64_t c, int64_t i, int64_t j) {
    float* plane = tiling.plane(dx, n, c);
    const float* column = dv + tiling.column(n, c, i, j);
    float d[16];
    for (int k = 0; k < 16; ++k) d[k] = column[k * tiling.element_stride()];
    for (int r = 0; r < 4; ++r) input_1d_adjoint(d + 4 * r, d + 4 * r, 1);
    for (int s = 0; s < 4; ++s) input_1d_adjoint(d + s, d + s, 4);
    for (int r = 0; r < 4; ++r) {
      const int64_t y = 2 * i - 1 + r;
      if (y < 0 || y >= tiling.height) continue;
      for (int s = 0; s < 4; ++s) {
        const int64_t xx = 2 * j - 1 + s;
        if (xx >= 0 && xx < tiling.width) plane[y * tiling.width + xx] += d[4 * r + s];
      }
    }
  });
  return 0;
}

// inputs: M [16, O, N*T], shape [N, H, W] (only its shape is read); output: y [N, O, H, W].
extern "C" int WinogradOutput(int nparam, void** params, int* ndims, int64_t** shapes,
                              const char** dtypes, void* stream, void* extra) {
  const float* m = static_cast<const float*>(params[0]);
  float* y = static_cast<float*>(params[2]);
  const Tiling tiling(shapes[1][0], shapes[0][1], shapes[1][1], shapes[1][2]);
  for_each_tile(tiling, [&](int64_t n, int64_t o, int64_t i, int64_t j) {
    float* plane = tiling.plane(y, n, o);
    const float* column = m + tiling.column(n, o, i, j);
    float tile[16], rows[8], out[4];
    for (int k = 0; k < 16; ++k) tile[k] = column[k * tiling.element_stride()];
    for (int s = 0; s < 4; ++s) output_1d(tile + s, rows + s, 4, 4);
    for (int r = 0; r < 2; ++r) output_1d(rows + 4 * r, out + 2 * r, 1, 1);
    for (int r = 0; r < 2; ++r) {
      const int64_t yy = 2 * i + r;
      if (yy >= tiling.height) continue;
      for (int s = 0; s < 2; ++s) {
        const int64_t xx = 2 * j + s;
        if (xx < tiling.width) plane[yy * tiling.width + xx] = out[2 * r + s];
      }
    }
  });
  return 0;
}

// Gradient of WinogradOutput. inputs: dy [N, O, H, W]; output: dM [16, O, N*T].
extern "C" int WinogradOutputGrad(int nparam, void** params, int* ndims, int64_t** shapes,
                                  const char** dtypes, void* stream, void* extra) {
  const float* dy = static_cast<const float*>(params[0]);
  float* dm = static_cast<float*>(params[1]);
  const Tiling tiling(shapes[0][0], shapes[0][1], shapes[0][2], shapes[0][3]);
  for_each_tile(tiling, [&](int64_t n, int64_t o, int64_t i, int64_t j) {
    const float* plane = tiling.plane(dy, n, o);
    float grad[4], rows[8], tile[16];
    for (int r = 0; r < 2; ++r) {
      for (int s = 0; s < 2; ++s) {
        const int64_t yy = 2 * i + r, xx = 2 * j + s;
        const bool inside = yy < tiling.height && xx < tiling.width;
        grad[2 * r + s] = inside ? plane[yy * tiling.width + xx] : 0.f;
      }
    }
    for (int r = 0; r < 2; ++r) output_1d_adjoint(grad + 2 * r, rows + 4 * r, 1, 1);
    for (int s = 0; s < 4; ++s) output_1d_adjoint(rows + s, tile + s, 4, 4);
    float* column = dm + tiling.column(n, o, i, j);
    for (int k = 0; k < 16; ++k) column[k * tiling.element_stride()] = tile[k];
  });
  return 0;
}
