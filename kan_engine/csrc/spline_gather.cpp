// The gathered spline matmuls of a KAN layer on the CPU; kan_engine/spline_gather.py says why
// and when the layer takes them.
//
// Per (row b, input i) only the k+1 basis functions of the interval s that holds x[b, i] are
// non-zero. With C the spline weight (out, G+k, in) and alpha = scale_spline:
//   y[b, :]          += alpha * sum_t v_t * C[:, s-k+t, i]               (forward)
//   dC[:, s-k+t, i]  += alpha * sum_b v_t * g[b, :]                      (weight gradient)
//   dx[b, i]          = alpha * sum_t v'_t * dot(g[b, :], C[:, s-k+t, i]) (input gradient)
// with v, v' the values and slopes of de Boor's triangular scheme on the knots of input i
// (exact on any grid); functions s-k+t outside 0..G+k-1 do not exist and are skipped.
//
// The inner loops run over contiguous outputs, so C is transposed once per forward into
// Ct (in, G+k, out'), out' = out padded to a multiple of kTile; the backward takes that Ct and
// accumulates dCt one block of inputs at a time, each block's written back transposed into
// dC when it is done (no weight-sized dCt). The rows of a block of inputs are bucketed by
// (sub-chunk of rows, interval): inside a bucket every row uses the same k+1 weight rows, which
// stay in registers while the rows stream by, and a sub-chunk's slab of y (forward) or g
// (backward) stays in cache while the block's inputs go by.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace {

constexpr int kLanes = 16;
constexpr int kTile = 64;  // outputs per register tile
constexpr int kVecs = kTile / kLanes;
constexpr int kMaxOrder = 5;
constexpr int kMaxKnots = 512;  // M + 1 + 2k knots of one input, padded
using Vec = float __attribute__((vector_size(kLanes * sizeof(float))));
using IVec = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
// Not `Vec{} + s`: adding +0 is not an identity (-0.0 + 0 = +0), so it would cost an add
// before every broadcast; subtracting +0 is one, and folds into the broadcast.
inline Vec splat(float s) { return s - Vec{}; }
inline float hsum(Vec v) {
  using Half = float __attribute__((vector_size(kLanes * sizeof(float) / 2)));
  using Quarter = float __attribute__((vector_size(kLanes * sizeof(float) / 4)));
  const Half h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Quarter q =
      __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}
inline int64_t row_of(const float* entry) {
  int32_t b;
  std::memcpy(&b, entry, sizeof b);
  return b;
}

// Blocking. Forward: blocks of kForwardInputs inputs, rows in sub-chunks of kForwardSub, whose
// slab of y in one output tile (16 KiB) stays in L1 while the block's inputs go by. Backward:
// blocks of kBackwardInputs inputs (one task each: their dC columns are theirs alone), outputs in
// chunks of kBackwardOut, rows in sub-chunks of kBackwardSub, whose slab of g (256 KiB) stays
// in L2. The bucketed entries of at most kChunkRows rows are kept at a time, which bounds the
// buffers whatever the batch.
constexpr int64_t kChunkRows = 4096;
constexpr int64_t kForwardInputs = 64, kForwardSub = 64;
constexpr int64_t kBackwardInputs = 32, kBackwardOut = 256, kBackwardSub = 256;
// Columns of a transpose per task: a task's tiles read kTransposeCols floats of each source row
// it visits, a kilobyte per page, not a cache line (the TLB misses would set the speed).
constexpr int64_t kTransposeCols = 256;
// Buffers from this size on are mapped as transparent huge pages where Linux allows it: a
// fresh 32 MiB buffer costs ~25 ms of 4 KiB page faults on a VM, ~4 ms as huge pages, and rows
// a page apart then cost no TLB misses.
constexpr size_t kHugeBytes = size_t(4) << 20, kHugePage = size_t(2) << 20;

// The k+1 non-zero basis values at kLanes inputs x on their intervals s of the knots
// t[-K..M+K] (`t` points at knot 0; K extrapolated knots on each side keep the values of
// functions that do not exist finite), and their slopes: de Boor's triangular scheme, one row
// per lane. B'_{j,k} = k B_{j,k-1} / (t_{j+k} - t_j) - k B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}),
// and those quotients are the last level's, so the slopes cost no division of their own.
template <int K>
inline void local_basis(const Vec& x, const int32_t (&s)[kLanes], const float* t,
                        Vec (&val)[K + 1], Vec (&slope)[K + 1]) {
  Vec left[K + 1], right[K + 1], quotient[K];
  for (int j = 1; j <= K; ++j) {
    for (int l = 0; l < kLanes; ++l) {
      left[j][l] = x[l] - t[s[l] + 1 - j];
      right[j][l] = t[s[l] + j] - x[l];
    }
  }
  val[0] = splat(1.f);
  for (int j = 1; j <= K; ++j) {
    Vec saved = Vec{};
    for (int r = 0; r < j; ++r) {
      const Vec q = val[r] / (right[r + 1] + left[j - r]);
      val[r] = saved + right[r + 1] * q;
      saved = left[j - r] * q;
      if (j == K) quotient[r] = q;
    }
    val[j] = saved;
  }
  for (int r = 0; r <= K; ++r) {
    slope[r] = float(K) * ((r > 0 ? quotient[r - 1] : Vec{}) - (r < K ? quotient[r] : Vec{}));
  }
}

// Shapes of one call: rows N, inputs I, outputs O (padded to Op, a multiple of kTile), M
// intervals of the extended grid, Kr = M - K basis functions.
struct Dims {
  int64_t N, I, O, Op, M, Kr;
};

int64_t n_keys(int64_t rows, int64_t sub, int64_t M) { return (rows + sub - 1) / sub * M; }

// Rows [r0, r1) of input i as entries (row, alpha * values[, alpha * slopes]) bucketed by
// (sub-chunk of `sub` rows, interval): key (b - r0) / sub * M + s holds the entries
// [starts[key], starts[key + 1]), in row order. Adds the unscaled values to `colsum` (Kr, I)
// when it is set. Two passes over kLanes rows at a time: the intervals (by comparisons with the
// interior knots) and the bucket sizes, then the values, written into their buckets.
template <int K>
void bucket_input(const float* x, const float* grid, const Dims& d, int64_t i, int64_t r0,
                  int64_t r1, int64_t sub, float alpha, bool slopes, float* colsum,
                  float* entries, int64_t* starts, std::vector<int32_t>& cells) {
  constexpr int K1 = K + 1;
  const int width = 1 + (slopes ? 2 : 1) * K1;
  const int64_t M = d.M, count = n_keys(r1 - r0, sub, M);
  float knots[kMaxKnots];
  const float* g = grid + i * (M + 1);
  for (int p = 0; p < K; ++p) {
    knots[p] = g[0] - (g[1] - g[0]) * (K - p);
    knots[M + 1 + K + p] = g[M] + (g[M] - g[M - 1]) * (p + 1);
  }
  std::copy(g, g + M + 1, knots + K);
  const float* t = knots + K;
  // x of kLanes rows, NaN (outside every interval) past r1
  auto rows_of = [&](int64_t b0) {
    Vec xv = splat(std::numeric_limits<float>::quiet_NaN());
    for (int64_t l = 0; l < std::min<int64_t>(kLanes, r1 - b0); ++l) xv[l] = x[(b0 + l) * d.I + i];
    return xv;
  };
  cells.resize(r1 - r0);
  std::fill(starts, starts + count + 1, 0);
  for (int64_t b0 = r0; b0 < r1; b0 += kLanes) {
    const Vec xv = rows_of(b0);
    const IVec inside = (xv >= splat(t[0])) & (xv < splat(t[M]));  // -1 (true) or 0
    IVec below = IVec{};  // minus the interior knots <= x: the interval, negated
    for (int64_t m = 1; m < M; ++m) below += xv >= splat(t[m]);
    for (int64_t l = 0; l < std::min<int64_t>(kLanes, r1 - b0); ++l) {
      cells[b0 - r0 + l] = inside[l] ? -below[l] : -1;
      if (inside[l]) ++starts[(b0 - r0 + l) / sub * M - below[l] + 1];
    }
  }
  for (int64_t key = 0; key < count; ++key) starts[key + 1] += starts[key];
  std::vector<int64_t> pos(starts, starts + count);
  for (int64_t b0 = r0; b0 < r1; b0 += kLanes) {
    const int64_t lanes = std::min<int64_t>(kLanes, r1 - b0);
    int32_t s[kLanes] = {};
    bool any = false;
    for (int64_t l = 0; l < lanes; ++l) {
      s[l] = std::max(cells[b0 - r0 + l], 0);
      any = any || cells[b0 - r0 + l] >= 0;
    }
    if (!any) continue;
    Vec val[K1], slope[K1];
    local_basis<K>(rows_of(b0), s, t, val, slope);
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t b = b0 + l;
      if (cells[b - r0] < 0) continue;
      float* e = entries + pos[(b - r0) / sub * M + s[l]]++ * width;
      const int32_t row = int32_t(b);
      std::memcpy(e, &row, sizeof row);
      for (int r = 0; r <= K; ++r) {
        e[1 + r] = alpha * val[r][l];
        if (slopes) e[1 + K1 + r] = alpha * slope[r][l];
        const int64_t j = s[l] - K + r;
        if (colsum != nullptr && j >= 0 && j < d.Kr) colsum[j * d.I + i] += val[r][l];
      }
    }
  }
}

// The K+1 rows of ct (Kr rows of `stride` floats) that bucket s of one input uses, nullptr
// where the function s-K+t does not exist.
template <int K>
inline void bucket_rows(const float* ct, int64_t s, int64_t Kr, int64_t stride,
                        const float* (&rows)[K + 1]) {
  for (int t = 0; t <= K; ++t) {
    const int64_t j = s - K + t;
    rows[t] = j >= 0 && j < Kr ? ct + j * stride : nullptr;
  }
}

// y[b, o0:o0+kTile] += sum_t v_t * rows[t][o0:o0+kTile] for the n entries of one bucket; y is
// tile-major (Op / kTile, N, kTile).
template <int K1>
inline void forward_bucket(const float* const (&rows)[K1], int64_t o0, const float* entries,
                           int64_t n, int width, float* y, int64_t N) {
  Vec w[K1][kVecs];
  for (int t = 0; t < K1; ++t)
    for (int q = 0; q < kVecs; ++q) w[t][q] = rows[t] ? load(rows[t] + o0 + q * kLanes) : Vec{};
  for (int64_t e = 0; e < n; ++e) {
    const float* entry = entries + e * width;
    float* yr = y + o0 * N + row_of(entry) * kTile;
    Vec acc[kVecs];
    for (int q = 0; q < kVecs; ++q) acc[q] = load(yr + q * kLanes);
    for (int t = 0; t < K1; ++t) {
      const Vec v = splat(entry[1 + t]);
      for (int q = 0; q < kVecs; ++q) acc[q] += v * w[t][q];
    }
    for (int q = 0; q < kVecs; ++q) store(yr + q * kLanes, acc[q]);
  }
}

// dx[b, i] += sum_t v'_t * dot(g[b, o0:o1], rows[t][o0:o1]) for NB entries of one bucket;
// g is tile-major (Op / kTile, N, kTile).
template <int K1, int NB>
inline void input_grad_group(const float* const (&rows)[K1], const float* zeros, int64_t o0,
                             int64_t o1, const float* entries, int width, const float* g,
                             int64_t N, float* dx, int64_t I, int64_t i) {
  Vec acc[NB][K1] = {};
  const float* wr[K1];
  for (int t = 0; t < K1; ++t) wr[t] = rows[t] ? rows[t] : zeros;
  for (int64_t o = o0; o < o1; o += kTile) {
    const float* gt = g + o * N;
    for (int q = 0; q < kVecs; ++q) {
      Vec gv[NB];
      for (int m = 0; m < NB; ++m) gv[m] = load(gt + row_of(entries + m * width) * kTile + q * kLanes);
      for (int t = 0; t < K1; ++t) {
        const Vec wv = load(wr[t] + o + q * kLanes);
        for (int m = 0; m < NB; ++m) acc[m][t] += gv[m] * wv;
      }
    }
  }
  for (int m = 0; m < NB; ++m) {
    const float* entry = entries + m * width;
    Vec total = splat(entry[1 + K1]) * acc[m][0];
    for (int t = 1; t < K1; ++t) total += splat(entry[1 + K1 + t]) * acc[m][t];
    dx[row_of(entry) * I + i] += hsum(total);
  }
}

// rows[t][o0:o0+kTile] += sum over the bucket's entries of v_t * g[b, o0:o0+kTile]; g is
// tile-major (Op / kTile, N, kTile).
template <int K1>
inline void weight_grad_bucket(float* const (&rows)[K1], int64_t o0, const float* entries,
                               int64_t n, int width, const float* g, int64_t N) {
  Vec acc[K1][kVecs] = {};
  for (int64_t e = 0; e < n; ++e) {
    const float* entry = entries + e * width;
    const float* gr = g + o0 * N + row_of(entry) * kTile;
    Vec gv[kVecs];
    for (int q = 0; q < kVecs; ++q) gv[q] = load(gr + q * kLanes);
    for (int t = 0; t < K1; ++t) {
      const Vec v = splat(entry[1 + t]);
      for (int q = 0; q < kVecs; ++q) acc[t][q] += v * gv[q];
    }
  }
  for (int t = 0; t < K1; ++t) {
    if (rows[t] == nullptr) continue;
    for (int q = 0; q < kVecs; ++q) {
      float* p = rows[t] + o0 + q * kLanes;
      store(p, load(p) + acc[t][q]);
    }
  }
}

// dst[n * ds + m] = src[m * ss + n] for m < rows, n < cols (at most kLanes each): a full tile
// as 16 vector loads and stores, each a whole cache line (element-wise, the strided side cost
// 2-3x as long: a dC write-back took 16 ms at (1024, 8, 1024), 7 ms so).
inline void transpose_tile(const float* src, int64_t ss, float* dst, int64_t ds, int64_t rows,
                           int64_t cols) {
  if (rows == kLanes && cols == kLanes) {
    Vec r[kLanes];
    for (int m = 0; m < kLanes; ++m) r[m] = load(src + m * ss);
    for (int n = 0; n < kLanes; ++n) {
      Vec c;
      for (int m = 0; m < kLanes; ++m) c[m] = r[m][n];
      store(dst + n * ds, c);
    }
    return;
  }
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t n = 0; n < cols; ++n) dst[n * ds + m] = src[m * ss + n];
}

// dst[b, j, a] = src[a, j, b] for a < A, b < B; src rows hold sb floats, dst rows db. Columns
// b in tasks of kTransposeCols (a parallel loop; serial inside one).
void transpose(const float* src, int64_t A, int64_t J, int64_t B, int64_t sb, int64_t db,
               float* dst) {
  constexpr int64_t T = kLanes;
  at::parallel_for(0, (B + kTransposeCols - 1) / kTransposeCols, 1, [&](int64_t lo, int64_t hi) {
    const int64_t b_end = std::min(B, hi * kTransposeCols);
    for (int64_t j = 0; j < J; ++j) {
      for (int64_t a0 = 0; a0 < A; a0 += T) {
        for (int64_t b0 = lo * kTransposeCols; b0 < b_end; b0 += T) {
          transpose_tile(src + (a0 * J + j) * sb + b0, J * sb, dst + (b0 * J + j) * db + a0,
                         J * db, std::min(T, A - a0), std::min(T, b_end - b0));
        }
      }
    }
  });
}

// An uninitialised float32 CPU tensor, asked to be backed by huge pages from kHugeBytes on
// (see there): torch's allocator maps such a buffer fresh, and advice given before its pages
// are touched applies to them.
torch::Tensor big_empty(at::IntArrayRef sizes) {
  torch::Tensor t = torch::empty(sizes, torch::TensorOptions().dtype(torch::kFloat));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = t.numel() * sizeof(float);
  if (bytes >= kHugeBytes) {
    const uintptr_t begin = uintptr_t(t.data_ptr<float>()), end = begin + bytes;
    const uintptr_t first = (begin + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
    const uintptr_t last = end & ~uintptr_t(kHugePage - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return t;
}

template <int K>
void forward_impl(const float* x, const float* grid, const float* ct, float* y, float* colsum,
                  const Dims& d, float alpha) {
  constexpr int K1 = K + 1;
  const int width = 1 + K1;
  const int64_t R = std::min(kChunkRows, d.N), keys = n_keys(R, kForwardSub, d.M);
  std::vector<float> entries(kForwardInputs * R * width);
  std::vector<int64_t> starts(kForwardInputs * (keys + 1));
  for (int64_t r0 = 0; r0 < d.N; r0 += R) {
    const int64_t r1 = std::min(d.N, r0 + R), subs = (r1 - r0 + kForwardSub - 1) / kForwardSub;
    for (int64_t i0 = 0; i0 < d.I; i0 += kForwardInputs) {
      const int64_t ib = std::min(kForwardInputs, d.I - i0);
      at::parallel_for(0, ib, 1, [&](int64_t lo, int64_t hi) {
        std::vector<int32_t> cells;
        for (int64_t ii = lo; ii < hi; ++ii) {
          bucket_input<K>(x, grid, d, i0 + ii, r0, r1, kForwardSub, alpha, false, colsum,
                          entries.data() + ii * R * width, starts.data() + ii * (keys + 1),
                          cells);
        }
      });
      at::parallel_for(0, d.Op / kTile, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t tile = lo; tile < hi; ++tile) {
          for (int64_t sub = 0; sub < subs; ++sub) {
            for (int64_t ii = 0; ii < ib; ++ii) {
              const int64_t* st = starts.data() + ii * (keys + 1) + sub * d.M;
              const float* ent = entries.data() + ii * R * width;
              const float* cti = ct + (i0 + ii) * d.Kr * d.Op;
              for (int64_t s = 0; s < d.M; ++s) {
                if (st[s + 1] == st[s]) continue;
                const float* rows[K1];
                bucket_rows<K>(cti, s, d.Kr, d.Op, rows);
                forward_bucket<K1>(rows, tile * kTile, ent + st[s] * width, st[s + 1] - st[s],
                                   width, y, d.N);
              }
            }
          }
        }
      });
    }
  }
}

template <int K>
void backward_impl(const float* x, const float* grid, const float* ct, const float* g, float* dx,
                   float* dw, const Dims& d, float alpha) {
  constexpr int K1 = K + 1;
  const bool slopes = dx != nullptr;
  const int width = 1 + (slopes ? 2 : 1) * K1;
  const int64_t R = std::min(kChunkRows, d.N), keys = n_keys(R, kBackwardSub, d.M);
  const std::vector<float> zeros(d.Op, 0.f);
  at::parallel_for(0, (d.I + kBackwardInputs - 1) / kBackwardInputs, 1, [&](int64_t lo,
                                                                             int64_t hi) {
    std::vector<float> entries(kBackwardInputs * R * width);
    std::vector<float> dct(dw != nullptr ? kBackwardInputs * d.Kr * d.Op : 0);  // this block's
    std::vector<int64_t> starts(kBackwardInputs * (keys + 1));
    std::vector<int32_t> cells;
    for (int64_t i0 = lo * kBackwardInputs; i0 < std::min(d.I, hi * kBackwardInputs);
         i0 += kBackwardInputs) {
      const int64_t ib = std::min(kBackwardInputs, d.I - i0);
      std::fill(dct.begin(), dct.end(), 0.f);
      for (int64_t r0 = 0; r0 < d.N; r0 += R) {
        const int64_t r1 = std::min(d.N, r0 + R);
        const int64_t subs = (r1 - r0 + kBackwardSub - 1) / kBackwardSub;
        for (int64_t ii = 0; ii < ib; ++ii) {
          bucket_input<K>(x, grid, d, i0 + ii, r0, r1, kBackwardSub, alpha, slopes, nullptr,
                          entries.data() + ii * R * width, starts.data() + ii * (keys + 1),
                          cells);
        }
        for (int64_t o0 = 0; o0 < d.Op; o0 += kBackwardOut) {
          const int64_t o1 = std::min(d.Op, o0 + kBackwardOut);
          for (int64_t sub = 0; sub < subs; ++sub) {
            for (int64_t ii = 0; ii < ib; ++ii) {
              const int64_t i = i0 + ii, *st = starts.data() + ii * (keys + 1) + sub * d.M;
              const float* ent = entries.data() + ii * R * width;
              for (int64_t s = 0; s < d.M; ++s) {
                const int64_t n = st[s + 1] - st[s];
                if (n == 0) continue;
                const float* bucket = ent + st[s] * width;
                if (dx != nullptr) {
                  const float* rows[K1];
                  bucket_rows<K>(ct + i * d.Kr * d.Op, s, d.Kr, d.Op, rows);
                  int64_t e = 0;
                  for (; e + 4 <= n; e += 4)
                    input_grad_group<K1, 4>(rows, zeros.data(), o0, o1, bucket + e * width,
                                            width, g, d.N, dx, d.I, i);
                  for (; e < n; ++e)
                    input_grad_group<K1, 1>(rows, zeros.data(), o0, o1, bucket + e * width,
                                            width, g, d.N, dx, d.I, i);
                }
                if (dw != nullptr) {
                  const float* rows[K1];
                  bucket_rows<K>(dct.data() + ii * d.Kr * d.Op, s, d.Kr, d.Op, rows);
                  float* out[K1];
                  for (int t = 0; t < K1; ++t) out[t] = const_cast<float*>(rows[t]);
                  for (int64_t o = o0; o < o1; o += kTile)
                    weight_grad_bucket<K1>(out, o, bucket, n, width, g, d.N);
                }
              }
            }
          }
        }
      }
      // dw[o, j, i0 + ii] = dct[ii, j, o]
      if (dw != nullptr) transpose(dct.data(), ib, d.Kr, d.O, d.Op, d.I, dw + i0);
    }
  });
}

Dims dims_of(const torch::Tensor& x, const torch::Tensor& grid, int64_t O, int64_t order) {
  TORCH_CHECK(order >= 1 && order <= kMaxOrder, "spline_gather: order must be in 1..", kMaxOrder);
  for (const auto* t : {&x, &grid}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kFloat && t->is_contiguous(),
                "spline_gather: x and grid must be contiguous float32 CPU tensors");
  }
  TORCH_CHECK(x.dim() == 2 && grid.dim() == 2 && grid.size(0) == x.size(1),
              "spline_gather: x (N, in) and grid (in, G+2k+1)");
  TORCH_CHECK(x.size(0) < (int64_t(1) << 31), "spline_gather: at most 2^31 rows");
  const int64_t M = grid.size(1) - 1;
  TORCH_CHECK(M > 2 * order && M + 1 + 2 * order <= kMaxKnots,
              "spline_gather: grid of 1 to ", kMaxKnots - 4 * order - 1, " intervals");
  return Dims{x.size(0), x.size(1), O, (O + kTile - 1) / kTile * kTile, M, M - order};
}

template <typename F>
void by_order(int64_t order, F&& f) {
  switch (order) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
  }
}

// (N, O) -> tile-major (Op / kTile, N, kTile), zero beyond O: a tile's rows are contiguous, not
// Op floats apart (a power-of-two stride maps them all to the same few cache sets).
torch::Tensor tile_major(const torch::Tensor& t, int64_t Op) {
  const torch::Tensor p = t.size(1) == Op ? t : torch::constant_pad_nd(t, {0, Op - t.size(1)});
  return p.reshape({t.size(0), Op / kTile, kTile}).permute({1, 0, 2}).contiguous();
}

// (scale_base * base + scale_spline * B(x) @ C^T (N, out), the column sum of B(x) over the rows
// (G+k, in) or undefined without `want_sum`, Ct for the backward).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> forward(
    const torch::Tensor& x, const torch::Tensor& base, const torch::Tensor& weight,
    const torch::Tensor& grid, int64_t order, double scale_base, double scale_spline,
    bool want_sum) {
  const Dims d = dims_of(x, grid, weight.size(0), order);
  TORCH_CHECK(weight.scalar_type() == torch::kFloat && weight.is_contiguous() &&
                  weight.dim() == 3 && weight.size(1) == d.Kr && weight.size(2) == d.I,
              "spline_gather: weight must be a contiguous float32 (out, G+k, in)");
  torch::Tensor ct = big_empty({d.I, d.Kr, d.Op});
  transpose(weight.data_ptr<float>(), d.O, d.Kr, d.I, d.I, d.Op, ct.data_ptr<float>());
  if (d.Op != d.O) ct.narrow(2, d.O, d.Op - d.O).zero_();
  torch::Tensor y = tile_major(base.to(torch::kFloat) * scale_base, d.Op);
  torch::Tensor colsum = want_sum ? torch::zeros({d.Kr, d.I}, x.options()) : torch::Tensor();
  by_order(order, [&](auto k) {
    forward_impl<decltype(k)::value>(x.data_ptr<float>(), grid.data_ptr<float>(),
                                     ct.data_ptr<float>(), y.data_ptr<float>(),
                                     want_sum ? colsum.data_ptr<float>() : nullptr, d,
                                     float(scale_spline));
  });
  y = y.permute({1, 0, 2}).reshape({d.N, d.Op});
  return {d.Op == d.O ? y : y.narrow(1, 0, d.O).contiguous(), colsum, ct};
}

// (dL/dx or undefined, dL/dC (out, G+k, in) or undefined) from dL/dy `grad` (N, out) and the
// forward's Ct.
std::tuple<torch::Tensor, torch::Tensor> backward(const torch::Tensor& x, const torch::Tensor& ct,
                                                  const torch::Tensor& grid,
                                                  const torch::Tensor& grad, int64_t order,
                                                  double scale_spline, bool need_x, bool need_w) {
  const Dims d = dims_of(x, grid, grad.size(1), order);
  TORCH_CHECK(ct.is_contiguous() && ct.size(0) == d.I && ct.size(1) == d.Kr && ct.size(2) == d.Op,
              "spline_gather: ct must be the forward's");
  const torch::Tensor g = tile_major(grad.to(torch::kFloat), d.Op);
  torch::Tensor dx = need_x ? torch::zeros_like(x) : torch::Tensor();
  torch::Tensor dw = need_w ? big_empty({d.O, d.Kr, d.I}) : torch::Tensor();
  if (need_x || need_w) {
    by_order(order, [&](auto k) {
      backward_impl<decltype(k)::value>(
          x.data_ptr<float>(), grid.data_ptr<float>(), ct.data_ptr<float>(), g.data_ptr<float>(),
          need_x ? dx.data_ptr<float>() : nullptr, need_w ? dw.data_ptr<float>() : nullptr, d,
          float(scale_spline));
    });
  }
  return {dx, dw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.attr("max_order") = kMaxOrder;
  m.attr("max_knots") = kMaxKnots;
}
