// Modulated deformable im2col (DCNv2) for MindSpore's CPU backend, as "aot" Custom ops.
//
// Conventions (as src/model/dcn.py): 3x3 kernel, padding 1, dilation 1, one deformable group.
// offset_mask [N, 27, Ho, Wo] holds 9 dx, 9 dy, then 9 modulation scalars (already
// sigmoid-ed), tap k = 3*ky + kx. Output pixel (i, j), tap k samples the input plane at
// (y, x) = (i*stride - 1 + ky + dy, j*stride - 1 + kx + dx) bilinearly; a corner outside the
// plane reads zero. Columns are [N, C*9, Ho*Wo], row c*9 + k, so that a conv weight
// [O, C, 3, 3] reshaped to [O, C*9] multiplies them directly.
//
// Every function has the MindSpore aot signature; params = inputs then outputs.
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int kTaps = 9;

struct Geometry {
  int64_t batch, channels, height, width, out_height, out_width, stride;
  int64_t plane() const { return height * width; }
  int64_t out_plane() const { return out_height * out_width; }
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

// One sample (tap k of output pixel p): its 4 corners (y0,x0) (y0,x1) (y1,x0) (y1,x1) as
// plane indices (0 when outside), inside flags, bilinear fractions and modulation.
struct Sample {
  int32_t index[4];
  float inside[4];
  float frac_y, frac_x, modulation;

  float bilinear(int corner) const {
    const float wy = corner < 2 ? 1.f - frac_y : frac_y;
    const float wx = corner % 2 == 0 ? 1.f - frac_x : frac_x;
    return wy * wx * inside[corner];
  }
};

// The samples of one image, [9, Ho*Wo], tap-major.
std::vector<Sample> image_samples(const float* offset_mask, const Geometry& g) {
  const int64_t out_plane = g.out_plane();
  std::vector<Sample> samples(kTaps * out_plane);
#pragma omp parallel for collapse(2) schedule(static)
  for (int k = 0; k < kTaps; ++k) {
    for (int64_t i = 0; i < g.out_height; ++i) {
      const float* dx = offset_mask + k * out_plane;
      const float* dy = offset_mask + (kTaps + k) * out_plane;
      const float* modulation = offset_mask + (2 * kTaps + k) * out_plane;
      for (int64_t j = 0; j < g.out_width; ++j) {
        const int64_t p = i * g.out_width + j;
        const float y = static_cast<float>(i * g.stride - 1 + k / 3) + dy[p];
        const float x = static_cast<float>(j * g.stride - 1 + k % 3) + dx[p];
        const float y_floor = std::floor(y), x_floor = std::floor(x);
        Sample& s = samples[k * out_plane + p];
        s.frac_y = y - y_floor;
        s.frac_x = x - x_floor;
        s.modulation = modulation[p];
        const int64_t y0 = static_cast<int64_t>(y_floor), x0 = static_cast<int64_t>(x_floor);
        for (int corner = 0; corner < 4; ++corner) {
          const int64_t yy = y0 + corner / 2, xx = x0 + corner % 2;
          const bool inside = yy >= 0 && yy < g.height && xx >= 0 && xx < g.width;
          s.inside[corner] = inside ? 1.f : 0.f;
          s.index[corner] = inside ? static_cast<int32_t>(yy * g.width + xx) : 0;
        }
      }
    }
  }
  return samples;
}

}  // namespace

// inputs: x [N, C, H, W], offset_mask [N, 27, Ho, Wo], stride int32 [1];
// output: columns [N, C*9, Ho*Wo].
extern "C" int DeformIm2col(int nparam, void** params, int* ndims, int64_t** shapes,
                            const char** dtypes, void* stream, void* extra) {
  const float* x = static_cast<const float*>(params[0]);
  const float* offset_mask = static_cast<const float*>(params[1]);
  float* columns = static_cast<float*>(params[3]);
  const Geometry g = read_geometry(shapes, params[2]);
  const int64_t out_plane = g.out_plane();
  for (int64_t n = 0; n < g.batch; ++n) {
    const std::vector<Sample> samples =
        image_samples(offset_mask + n * 3 * kTaps * out_plane, g);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < g.channels; ++c) {
      const float* plane = x + (n * g.channels + c) * g.plane();
      float* rows = columns + (n * g.channels + c) * kTaps * out_plane;
      for (int64_t t = 0; t < kTaps * out_plane; ++t) {
        const Sample& s = samples[t];
        float value = 0.f;
        for (int corner = 0; corner < 4; ++corner) {
          value += s.bilinear(corner) * plane[s.index[corner]];
        }
        rows[t] = value * s.modulation;
      }
    }
  }
  return 0;
}

// Gradient with respect to x. inputs: x, offset_mask, stride, d_columns; output: d_x [N, C, H, W].
extern "C" int DeformIm2colGradInput(int nparam, void** params, int* ndims, int64_t** shapes,
                                     const char** dtypes, void* stream, void* extra) {
  const float* offset_mask = static_cast<const float*>(params[1]);
  const float* d_columns = static_cast<const float*>(params[3]);
  float* d_x = static_cast<float*>(params[4]);
  const Geometry g = read_geometry(shapes, params[2]);
  const int64_t out_plane = g.out_plane();
  for (int64_t n = 0; n < g.batch; ++n) {
    const std::vector<Sample> samples =
        image_samples(offset_mask + n * 3 * kTaps * out_plane, g);
    // One thread per input plane: the scatter of a plane never races.
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < g.channels; ++c) {
      float* plane = d_x + (n * g.channels + c) * g.plane();
      const float* rows = d_columns + (n * g.channels + c) * kTaps * out_plane;
      for (int64_t q = 0; q < g.plane(); ++q) plane[q] = 0.f;
      for (int64_t t = 0; t < kTaps * out_plane; ++t) {
        const Sample& s = samples[t];
        const float grad = rows[t] * s.modulation;
        for (int corner = 0; corner < 4; ++corner) {
          plane[s.index[corner]] += s.bilinear(corner) * grad;
        }
      }
    }
  }
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
  for (int64_t n = 0; n < g.batch; ++n) {
    const std::vector<Sample> samples =
        image_samples(offset_mask + n * 3 * kTaps * out_plane, g);
    float* d_dx = d_offset_mask + n * 3 * kTaps * out_plane;
    float* d_dy = d_dx + kTaps * out_plane;
    float* d_modulation = d_dy + kTaps * out_plane;
    // Each sample sums over the channels; samples are split between threads.
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < kTaps * out_plane; ++t) {
      d_dx[t] = 0.f;
      d_dy[t] = 0.f;
      d_modulation[t] = 0.f;
    }
    const int64_t block = 256;
    const int64_t num_blocks = (kTaps * out_plane + block - 1) / block;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < num_blocks; ++b) {
      const int64_t begin = b * block;
      const int64_t end = begin + block < kTaps * out_plane ? begin + block : kTaps * out_plane;
      for (int64_t c = 0; c < g.channels; ++c) {
        const float* plane = x + (n * g.channels + c) * g.plane();
        const float* rows = d_columns + (n * g.channels + c) * kTaps * out_plane;
        for (int64_t t = begin; t < end; ++t) {
          const Sample& s = samples[t];
          float v[4];
          for (int corner = 0; corner < 4; ++corner) {
            v[corner] = plane[s.index[corner]] * s.inside[corner];
          }
          const float grad = rows[t];
          const float value = (1.f - s.frac_y) * ((1.f - s.frac_x) * v[0] + s.frac_x * v[1]) +
                              s.frac_y * ((1.f - s.frac_x) * v[2] + s.frac_x * v[3]);
          const float dvalue_dy = (1.f - s.frac_x) * (v[2] - v[0]) + s.frac_x * (v[3] - v[1]);
          const float dvalue_dx = (1.f - s.frac_y) * (v[1] - v[0]) + s.frac_y * (v[3] - v[2]);
          d_modulation[t] += grad * value;
          d_dy[t] += grad * s.modulation * dvalue_dy;
          d_dx[t] += grad * s.modulation * dvalue_dx;
        }
      }
    }
  }
  return 0;
}
