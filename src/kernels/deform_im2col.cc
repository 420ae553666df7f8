// Modulated deformable im2col (DCNv2) for MindSpore's CPU backend, as "aot" Custom ops.
//
// Conventions (as src/model/dcn.py): 3x3 kernel, padding 1, dilation 1, one deformable group.
// offset_mask [N, 27, Ho, Wo] holds 9 dx, 9 dy, then 9 modulation scalars (already
// sigmoid-ed), tap k = 3*ky + kx. Output pixel (i, j), tap k samples the input plane at
// (y, x) = (i*stride - 1 + ky + dy, j*stride - 1 + kx + dx) bilinearly; a corner outside the
// plane reads zero. Columns are [C*9, N*Ho*Wo]: row c*9 + k, column n*Ho*Wo + p, so that a
// conv weight [O, C, 3, 3] reshaped to [O, C*9] multiplies them in one matmul.
//
// Every function has the MindSpore aot signature; params = inputs then outputs.
#include "threads.h"

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <vector>

namespace {

constexpr int kTaps = 9;

struct Geometry {
  int64_t batch, channels, height, width, out_height, out_width, stride;
  int64_t plane() const { return height * width; }
  int64_t out_plane() const { return out_height * out_width; }
  // Start of row (channel c, tap k), image n, in the [C*9, N*Ho*Wo] columns.
  int64_t row_start(int64_t c, int k, int64_t n) const {
    return (c * kTaps + k) * batch * out_plane() + n * out_plane();
  }
};

Geometry read_geometry(int64_t** shapes, const void* stride) {
  Geometry g;
  g.batch = shapes[0][0];
  g.channels = shapes[0][1];
  g.height = shapes[0][2];
  g.width = shapes[0][3];
  g.out_height = shapes[1][2];
  g.out_width = shapes[1][3];
  g.stride = *static_cast<const int32_t*>(stride);
  return g;
}

// The samples of one image, tap-major: entry t = k * Ho*Wo + p is tap k of output pixel p.
// Per sample: its 4 corners (y0,x0) (y0,x1) (y1,x0) (y1,x1) as plane indices (0 when
// outside), whether each is inside, the final corner weights (bilinear x inside x
// modulation), the bilinear fractions and the modulation.
struct SampleTable {
  std::vector<int32_t> index;   // [9*P, 4]
  std::vector<float> weight;    // [9*P, 4]
  std::vector<float> inside;    // [9*P, 4], 1 or 0
  std::vector<float> frac_y, frac_x, modulation;  // [9*P]

  SampleTable(const float* offset_mask, const Geometry& g)
      : index(4 * kTaps * g.out_plane()), weight(4 * kTaps * g.out_plane()),
        inside(4 * kTaps * g.out_plane()), frac_y(kTaps * g.out_plane()),
        frac_x(kTaps * g.out_plane()), modulation(kTaps * g.out_plane()) {
    const int64_t out_plane = g.out_plane();
#pragma omp parallel for collapse(2) schedule(static) num_threads(kernel_threads())
    for (int k = 0; k < kTaps; ++k) {
      for (int64_t i = 0; i < g.out_height; ++i) {
        const float* dx = offset_mask + k * out_plane;
        const float* dy = offset_mask + (kTaps + k) * out_plane;
        const float* mask = offset_mask + (2 * kTaps + k) * out_plane;
        for (int64_t j = 0; j < g.out_width; ++j) {
          const int64_t p = i * g.out_width + j, t = k * out_plane + p;
          const float y = static_cast<float>(i * g.stride - 1 + k / 3) + dy[p];
          const float x = static_cast<float>(j * g.stride - 1 + k % 3) + dx[p];
          const float y_floor = std::floor(y), x_floor = std::floor(x);
          const float fy = y - y_floor, fx = x - x_floor;
          const float corner_y[2] = {1.f - fy, fy}, corner_x[2] = {1.f - fx, fx};
          frac_y[t] = fy;
          frac_x[t] = fx;
          modulation[t] = mask[p];
          const int64_t y0 = static_cast<int64_t>(y_floor), x0 = static_cast<int64_t>(x_floor);
          for (int corner = 0; corner < 4; ++corner) {
            const int64_t yy = y0 + corner / 2, xx = x0 + corner % 2;
            const bool in = yy >= 0 && yy < g.height && xx >= 0 && xx < g.width;
            inside[4 * t + corner] = in ? 1.f : 0.f;
            index[4 * t + corner] = in ? static_cast<int32_t>(yy * g.width + xx) : 0;
            weight[4 * t + corner] =
                in ? corner_y[corner / 2] * corner_x[corner % 2] * mask[p] : 0.f;
          }
        }
      }
    }
  }
};

// One SampleTable per image.
std::vector<SampleTable> image_tables(const float* offset_mask, const Geometry& g) {
  std::vector<SampleTable> tables;
  tables.reserve(g.batch);
  for (int64_t n = 0; n < g.batch; ++n) {
    tables.emplace_back(offset_mask + n * 3 * kTaps * g.out_plane(), g);
  }
  return tables;
}

// Calls body(n, c, k, index, weight) for every image n, channel c and tap k, with the tap's
// corner indices and weights, [Ho*Wo, 4] each. Taps run one after the other so that a tap's
// part of the tables stays in cache for every channel; (image, channel) planes are split
// between threads, so a thread owns its planes and a scatter into one never races.
template <typename Body>
void for_each_plane_and_tap(const float* offset_mask, const Geometry& g, Body body) {
  const std::vector<SampleTable> tables = image_tables(offset_mask, g);
  const int64_t tap_offset = 4 * g.out_plane();
  for (int k = 0; k < kTaps; ++k) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(kernel_threads())
    for (int64_t n = 0; n < g.batch; ++n) {
      for (int64_t c = 0; c < g.channels; ++c) {
        body(n, c, k, tables[n].index.data() + k * tap_offset,
             tables[n].weight.data() + k * tap_offset);
      }
    }
  }
}

}  // namespace

// inputs: x [N, C, H, W], offset_mask [N, 27, Ho, Wo], stride int32 [1];
// output: columns [C*9, N*Ho*Wo].
extern "C" int DeformIm2col(int nparam, void** params, int* ndims, int64_t** shapes,
                            const char** dtypes, void* stream, void* extra) {
  const float* x = static_cast<const float*>(params[0]);
  float* columns = static_cast<float*>(params[3]);
  const Geometry g = read_geometry(shapes, params[2]);
  for_each_plane_and_tap(static_cast<const float*>(params[1]), g,
                         [&](int64_t n, int64_t c, int k, const int32_t* index,
                             const float* weight) {
    const float* plane = x + (n * g.channels + c) * g.plane();
    float* row = columns + g.row_start(c, k, n);
    for (int64_t p = 0; p < g.out_plane(); ++p) {
      const int32_t* i4 = index + 4 * p;
      const float* w4 = weight + 4 * p;
      row[p] = w4[0] * plane[i4[0]] + w4[1] * plane[i4[1]] + w4[2] * plane[i4[2]] +
               w4[3] * plane[i4[3]];
    }
  });
  return 0;
}

// Gradient with respect to x. inputs: x, offset_mask, stride, d_columns; output: d_x [N, C, H, W].
extern "C" int DeformIm2colGradInput(int nparam, void** params, int* ndims, int64_t** shapes,
                                     const char** dtypes, void* stream, void* extra) {
  const float* d_columns = static_cast<const float*>(params[3]);
  float* d_x = static_cast<float*>(params[4]);
  const Geometry g = read_geometry(shapes, params[2]);
  std::fill(d_x, d_x + g.batch * g.channels * g.plane(), 0.f);
  for_each_plane_and_tap(static_cast<const float*>(params[1]), g,
                         [&](int64_t n, int64_t c, int k, const int32_t* index,
                             const float* weight) {
    float* plane = d_x + (n * g.channels + c) * g.plane();
    const float* row = d_columns + g.row_start(c, k, n);
    for (int64_t p = 0; p < g.out_plane(); ++p) {
      const int32_t* i4 = index + 4 * p;
      const float* w4 = weight + 4 * p;
      const float grad = row[p];
      plane[i4[0]] += w4[0] * grad;
      plane[i4[1]] += w4[1] * grad;
      plane[i4[2]] += w4[2] * grad;
      plane[i4[3]] += w4[3] * grad;
    }
  });
  return 0;
}

// Gradient with respect to offset_mask. inputs: x, offset_mask, stride, d_columns;
// output: d_offset_mask [N, 27, Ho, Wo] (d dx, d dy, d modulation).
extern "C" int DeformIm2colGradOffsetMask(int nparam, void** params, int* ndims,
                                          int64_t** shapes, const char** dtypes, void* stream,
                                          void* extra) {
  const float* x = static_cast<const float*>(params[0]);
  const float* offset_mask = static_cast<const float*>(params[1]);
  const float* d_columns = static_cast<const float*>(params[3]);
  float* d_offset_mask = static_cast<float*>(params[4]);
  const Geometry g = read_geometry(shapes, params[2]);
  const int64_t out_plane = g.out_plane();
  constexpr int64_t kBlock = 512;  // samples per thread task: their sums stay in registers/L1
  const int64_t num_blocks = (out_plane + kBlock - 1) / kBlock;
  const std::vector<SampleTable> tables = image_tables(offset_mask, g);
  for (int k = 0; k < kTaps; ++k) {
    // Each sample sums over the channels; (image, block of samples) tasks are split between
    // threads.
#pragma omp parallel for collapse(2) schedule(static) num_threads(kernel_threads())
    for (int64_t n = 0; n < g.batch; ++n) {
      for (int64_t b = 0; b < num_blocks; ++b) {
        const SampleTable& table = tables[n];
        float* d_dx = d_offset_mask + n * 3 * kTaps * out_plane;
        float* d_dy = d_dx + kTaps * out_plane;
        float* d_modulation = d_dy + kTaps * out_plane;
        const int64_t begin = b * kBlock, end = std::min(begin + kBlock, out_plane);
        float sum_dx[kBlock] = {}, sum_dy[kBlock] = {}, sum_mod[kBlock] = {};
        for (int64_t c = 0; c < g.channels; ++c) {
          const float* plane = x + (n * g.channels + c) * g.plane();
          const float* row = d_columns + g.row_start(c, k, n);
          for (int64_t p = begin; p < end; ++p) {
            const int64_t t = k * out_plane + p;
            const int32_t* i4 = table.index.data() + 4 * t;
            const float* in4 = table.inside.data() + 4 * t;
            const float v0 = plane[i4[0]] * in4[0], v1 = plane[i4[1]] * in4[1];
            const float v2 = plane[i4[2]] * in4[2], v3 = plane[i4[3]] * in4[3];
            const float fy = table.frac_y[t], fx = table.frac_x[t], grad = row[p];
            const float value = (1.f - fy) * ((1.f - fx) * v0 + fx * v1) +
                                fy * ((1.f - fx) * v2 + fx * v3);
            sum_mod[p - begin] += grad * value;
            sum_dy[p - begin] += grad * ((1.f - fx) * (v2 - v0) + fx * (v3 - v1));
            sum_dx[p - begin] += grad * ((1.f - fy) * (v1 - v0) + fy * (v3 - v2));
          }
        }
        for (int64_t p = begin; p < end; ++p) {
          const int64_t t = k * out_plane + p;
          d_modulation[t] = sum_mod[p - begin];
          d_dy[t] = sum_dy[p - begin] * table.modulation[t];
          d_dx[t] = sum_dx[p - begin] * table.modulation[t];
        }
      }
    }
  }
  return 0;
}
