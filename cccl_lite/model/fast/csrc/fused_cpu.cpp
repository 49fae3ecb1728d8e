// Fused CPU kernels for scoring: eq 26's per-pair recurrence and Branch 2 (eqs 17-20).
//
// Built on first use by cccl_lite/fused.py (torch.utils.cpp_extension.load, cached
// under TORCH_EXTENSIONS_DIR); chapter 10 and benchmarks/README.md say why they
// exist. In PyTorch every step of the per-pair work is one operation over a whole
// block of pairs, each pass reading and writing memory; here a tile of pairs is
// finished while its numbers are in cache, the elementwise work in one pass.
//
// Each function computes what a PyTorch path of the package computes, with the
// same regrouped equations (their docstrings): cross_gru_recur is the loop of
// cccl_lite.reason.CrossGRU.fast_recur, local_branch the rest of
// cccl_lite.align.LocalBranch.fast_forward after the cosines. float32 and
// float64; the only difference is exp: float32 uses exp_approx below (a
// polynomial with relative error about 1e-7 that the compiler can vectorise),
// float64 uses std::exp, so the tests can compare with the reference to 1e-12.
// Forward only: autograd never reaches them (fused.usable).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// exp(x) = 2^k exp(r), x = k ln2 + r, |r| <= ln2/2 (Cody-Waite split of ln2);
// exp(r) by Cephes' expf polynomial. Branch-free, so loops over it vectorise.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;  // ternaries, not fmin/fmax: they vectorise
  x = x > 88.0f ? 88.0f : x;    // and keep NaN a NaN
  const float shifted = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23 rounds k
  const float k = shifted - 12582912.0f;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^k from k's bits, which sit in the low mantissa bits of `shifted`.
  const int32_t bits = (__builtin_bit_cast(int32_t, shifted) - 0x4B400000 + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline double exp_approx(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + exp_approx(-x)); }

// One GRU step's gates for one pair: gi (3d) its node's prepared input projection
// [a_r, -a_z, 2 i_n] (biases folded in), a (3d) = g W_g, b_n (d); g (d) the state
// (h + 1)/2, updated in place: g <- lerp(g, s, 1 - z), s = sigmoid(2(i_n + r (W_hn h + b_hn))).
template <typename T>
inline void gru_gates(const T* __restrict gi, const T* __restrict a, const T* __restrict b_n,
                      T* __restrict g, int64_t d) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) {
    const T r = sigmoid(gi[k] + a[k]);
    const T q = sigmoid(gi[d + k] + a[d + k]);  // 1 - z
    const T s = sigmoid(gi[2 * d + k] + r * (a[2 * d + k] + b_n[k]));
    g[k] += q * (s - g[k]);
  }
}

}  // namespace

// The recurrence of fast_recur for every (x item, y item) pair.
//   gi    (B_x, L, 3d)  prepared node projections (see gru_gates)
//   mask  (B_x, L)      bool, valid nodes; at an invalid node a pair keeps its state
//   g0    (1 or B_x, B_y, d)  start states (h + 1)/2
//   w     (d, 3d)       W_g, so that g W_g = [a_r, -a_z, 2 W_hn h] without biases
//   b_n   (d)           the n gate's bias, prepared
//   tile  pairs per tile: consecutive pairs (x, y), x-major, whose (tile, 3d)
//         GEMM output stays in cache
// Returns h (B_x, B_y, d), each pair's state after its last valid node.
at::Tensor cross_gru_recur(at::Tensor gi, at::Tensor mask, at::Tensor g0, at::Tensor w,
                           at::Tensor b_n, int64_t tile) {
  TORCH_CHECK(gi.dim() == 3 && mask.dim() == 2 && g0.dim() == 3 && w.dim() == 2,
              "cross_gru_recur: expected gi (B_x, L, 3d), mask (B_x, L), g0 (1|B_x, B_y, d), w (d, 3d)");
  TORCH_CHECK(gi.device().is_cpu() && g0.scalar_type() == gi.scalar_type() &&
              w.scalar_type() == gi.scalar_type() && b_n.scalar_type() == gi.scalar_type(),
              "cross_gru_recur: CPU tensors of one floating dtype expected");
  TORCH_CHECK(tile >= 1, "cross_gru_recur: tile must be positive");
  gi = gi.contiguous();
  g0 = g0.contiguous();
  w = w.contiguous();
  b_n = b_n.contiguous();
  const at::Tensor valid = mask.to(at::kBool).contiguous();
  const int64_t bx = gi.size(0), steps = gi.size(1), d = w.size(0), by = g0.size(1);
  TORCH_CHECK(gi.size(2) == 3 * d && w.size(1) == 3 * d && b_n.numel() == d &&
              g0.size(2) == d && valid.size(0) == bx && valid.size(1) == steps &&
              (g0.size(0) == 1 || g0.size(0) == bx),
              "cross_gru_recur: inconsistent shapes");
  const bool shared = g0.size(0) == 1;
  // With one start state per y item, the first step's g W_g is per y item, not per pair.
  const at::Tensor gh0 = shared ? at::mm(g0[0], w).contiguous() : at::Tensor();
  at::Tensor out = at::empty({bx * by, d}, gi.options());
  const int64_t pairs = bx * by;
  const bool* m = valid.data_ptr<bool>();
  // stop[x]: one past x's last valid node; a tile runs to its items' largest stop.
  std::vector<int64_t> stop(bx, 0);
  for (int64_t x = 0; x < bx; ++x)
    for (int64_t t = 0; t < steps; ++t)
      if (m[x * steps + t]) stop[x] = t + 1;

  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "cross_gru_recur", [&] {
    const scalar_t* gi_p = gi.data_ptr<scalar_t>();
    const scalar_t* g0_p = g0.data_ptr<scalar_t>();
    const scalar_t* gh0_p = shared ? gh0.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bn_p = b_n.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    at::Tensor gh = at::empty({std::min(tile, pairs), 3 * d}, gi.options());
    // Tiles of consecutive pairs, one after the other; within a tile, step by
    // step: one GEMM for the tile (spread over torch's threads by the BLAS),
    // then the gates, rows spread over the threads.
    for (int64_t p0 = 0; p0 < pairs; p0 += tile) {
      const int64_t rows = std::min(tile, pairs - p0);
      at::Tensor g = out.narrow(0, p0, rows);
      at::Tensor gh_rows = gh.narrow(0, 0, rows);
      int64_t last = 0;
      for (int64_t x = p0 / by; x <= (p0 + rows - 1) / by; ++x) last = std::max(last, stop[x]);
      at::parallel_for(p0, p0 + rows, 64, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p)
          std::memcpy(out_p + p * d, g0_p + ((shared ? 0 : (p / by) * by) + p % by) * d,
                      d * sizeof(scalar_t));
      });
      for (int64_t t = 0; t < last; ++t) {
        const bool first = t == 0 && shared;  // every state is still g0
        if (!first) at::mm_out(gh_rows, g, w);
        const scalar_t* gh_p = gh_rows.data_ptr<scalar_t>();
        at::parallel_for(p0, p0 + rows, 64, [&](int64_t begin, int64_t end) {
          for (int64_t p = begin; p < end; ++p) {
            const int64_t x = p / by;
            if (!m[x * steps + t]) continue;
            const scalar_t* a = first ? gh0_p + (p % by) * 3 * d : gh_p + (p - p0) * 3 * d;
            gru_gates(gi_p + (x * steps + t) * 3 * d, a, bn_p, out_p + p * d, d);
          }
        });
      }
    }
    at::parallel_for(0, pairs * d, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out_p[i] = 2 * out_p[i] - 1;  // h = 2g - 1
    });
  });
  return out.view({bx, by, d});
}

namespace {

// One row of Branch 2: (u - x)^2 with u = Σ_c w_c ctx_c over the contexts with
// w_c != 0 (eq 17), written to row (d). With D > 0 the width is known when
// compiling and the sum stays in registers (a sum kept in memory stalled on
// store-to-load forwarding here); D = 0: any width, summed in place in row.
template <typename T, int64_t D>
inline void attended_square(const T* x, const T* ctx, const T* w, int64_t stride, int64_t count,
                            int64_t d, T* __restrict row) {
  if constexpr (D > 0) {
    T acc[D];
#pragma GCC unroll 64
    for (int64_t k = 0; k < D; ++k) acc[k] = -x[k];
    for (int64_t c = 0; c < count; ++c) {
      const T wc = w[c * stride];
      if (wc == T(0)) continue;
      const T* cc = ctx + c * D;
#pragma GCC unroll 64
      for (int64_t k = 0; k < D; ++k) acc[k] += wc * cc[k];
    }
#pragma GCC unroll 64
    for (int64_t k = 0; k < D; ++k) row[k] = acc[k] * acc[k];
  } else {
    for (int64_t k = 0; k < d; ++k) row[k] = -x[k];
    for (int64_t c = 0; c < count; ++c) {
      const T wc = w[c * stride];
      if (wc == T(0)) continue;
      const T* cc = ctx + c * d;
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) row[k] += wc * cc[k];
    }
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) row[k] *= row[k];
  }
}

// Branch 2 for one pair (image i, text j): the squared differences (u - x)^2 of
// both directions (eqs 17-19), one row per valid query, written to zv (rows of
// V -> T) and zt (rows of T -> V). rel (n, m) = relu(cos(v_a, t_b)), 0 at padding;
// vf, tf the masks as 0/1; e (n, m), inv and total scratch space.
template <typename T, int64_t D>
void local_pair_rows(const T* rel, const T* v, const T* vf, const T* t, const T* tf,
                     int64_t n, int64_t m, int64_t d, T lambda, T* zv, T* zt, T* e,
                     T* inv, T* total) {
  const T tiny = std::numeric_limits<T>::min();
  // λ M̄ lies in [0, λ]: no max is subtracted (as LocalBranch._weights for λ <= 60).
  // V -> T: l2 over the regions a for each word b, softmax over the valid words;
  // e holds the normalised weights ω_ab.
  for (int64_t b = 0; b < m; ++b) inv[b] = 0;
  for (int64_t a = 0; a < n; ++a)
#pragma omp simd
    for (int64_t b = 0; b < m; ++b) inv[b] += rel[a * m + b] * rel[a * m + b];
  for (int64_t b = 0; b < m; ++b) inv[b] = lambda / std::sqrt(std::max(inv[b], T(1e-16)));
  for (int64_t a = 0; a < n; ++a) {
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t b = 0; b < m; ++b) {
      e[a * m + b] = exp_approx(rel[a * m + b] * inv[b]) * tf[b];
      sum += e[a * m + b];
    }
    const T scale = T(1) / std::max(sum, tiny);
#pragma omp simd
    for (int64_t b = 0; b < m; ++b) e[a * m + b] *= scale;
  }
  for (int64_t a = 0; a < n; ++a) {
    if (vf[a] == T(0)) continue;
    attended_square<T, D>(v + a * d, t, e + a * m, 1, m, d, zv);
    zv += d;
  }
  // T -> V: l2 over the words b for each region a, softmax over the valid regions.
  for (int64_t b = 0; b < m; ++b) total[b] = 0;
  for (int64_t a = 0; a < n; ++a) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t b = 0; b < m; ++b) s += rel[a * m + b] * rel[a * m + b];
    const T c = lambda / std::sqrt(std::max(s, T(1e-16)));
    const T keep = vf[a];
#pragma omp simd
    for (int64_t b = 0; b < m; ++b) {
      e[a * m + b] = exp_approx(rel[a * m + b] * c) * keep;
      total[b] += e[a * m + b];
    }
  }
  for (int64_t b = 0; b < m; ++b) total[b] = T(1) / std::max(total[b], tiny);
  for (int64_t a = 0; a < n; ++a)
#pragma omp simd
    for (int64_t b = 0; b < m; ++b) e[a * m + b] *= total[b];
  for (int64_t b = 0; b < m; ++b) {
    if (tf[b] == T(0)) continue;
    attended_square<T, D>(t + b * d, v, e + b, m, n, d, zt);
    zt += d;
  }
}

// out (P) += Σ_rows y_r / (count ‖y_r‖): the mean of the unit vectors VSF (eqs 15, 18-19).
// The weights first (independent rows, so their square roots and divisions
// overlap), then the sum; P > 0: the width known when compiling.
template <typename T, int64_t P>
void add_unit_mean(const T* y, int64_t rows, int64_t p_runtime, T* out, T* coef) {
  const int64_t p = P > 0 ? P : p_runtime;
  for (int64_t r = 0; r < rows; ++r) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < p; ++k) s += y[r * p + k] * y[r * p + k];
    coef[r] = T(1) / (T(rows) * std::max(std::sqrt(s), T(1e-12)));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T c = coef[r];
#pragma omp simd
    for (int64_t k = 0; k < p; ++k) out[k] += c * y[r * p + k];
  }
}

}  // namespace

// sim^O (eqs 17-20) of every (image, text) pair, as LocalBranch.fast_forward.
//   rel   (B_i, n, B_t, m)  relu(cos(v_a, t_b)) of every pair, 0 at padding
//   v     (B_i, n, d), v_mask (B_i, n); t (B_t, m, d), t_mask (B_t, m)
//   w_vt, w_tv (P, d)       the VSF weights of eqs 18 and 19
//   lambda                  the temperature of eq 17
//   tile  pairs per work item, i-major (their rows' GEMM inputs and outputs stay
//         in cache); the tiles are spread over torch's threads
// Returns (B_i, B_t, P).
at::Tensor local_branch(at::Tensor rel, at::Tensor v, at::Tensor v_mask, at::Tensor t,
                        at::Tensor t_mask, at::Tensor w_vt, at::Tensor w_tv, double lambda,
                        int64_t tile) {
  TORCH_CHECK(rel.dim() == 4 && v.dim() == 3 && t.dim() == 3 && w_vt.dim() == 2 &&
              w_tv.dim() == 2, "local_branch: expected rel (B_i, n, B_t, m), v (B_i, n, d), "
              "t (B_t, m, d), w_vt and w_tv (P, d)");
  TORCH_CHECK(v.device().is_cpu() && rel.scalar_type() == v.scalar_type() &&
              t.scalar_type() == v.scalar_type() && w_vt.scalar_type() == v.scalar_type() &&
              w_tv.scalar_type() == v.scalar_type(),
              "local_branch: CPU tensors of one floating dtype expected");
  TORCH_CHECK(tile >= 1, "local_branch: tile must be positive");
  TORCH_CHECK(lambda >= 0 && lambda <= 60, "local_branch: the temperature must lie in [0, 60] "
              "(exp(λ M̄) is computed without subtracting a maximum)");
  const int64_t bi = v.size(0), n = v.size(1), d = v.size(2);
  const int64_t bt = t.size(0), m = t.size(1), p = w_vt.size(0);
  TORCH_CHECK(t.size(2) == d && rel.size(0) == bi && rel.size(1) == n && rel.size(2) == bt &&
              rel.size(3) == m && w_vt.size(1) == d && w_tv.size(0) == p &&
              w_tv.size(1) == d && v_mask.numel() == bi * n && t_mask.numel() == bt * m,
              "local_branch: inconsistent shapes");
  rel = rel.contiguous();
  v = v.contiguous();
  t = t.contiguous();
  const at::Tensor wv_t = w_vt.t().contiguous(), wt_t = w_tv.t().contiguous();  // (d, P)
  const at::Tensor vm = v_mask.to(at::kBool).contiguous(), tm = t_mask.to(at::kBool).contiguous();
  at::Tensor out = at::zeros({bi, bt, p}, v.options());
  const int64_t pairs = bi * bt, tiles = (pairs + tile - 1) / tile;
  const bool* vm_p = vm.data_ptr<bool>();
  const bool* tm_p = tm.data_ptr<bool>();

  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "local_branch", [&] {
    const scalar_t* rel_p = rel.data_ptr<scalar_t>();
    const scalar_t* v_p = v.data_ptr<scalar_t>();
    const scalar_t* t_p = t.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      const auto opts = v.options();
      at::Tensor zv = at::empty({tile * n, d}, opts), zt = at::empty({tile * m, d}, opts);
      at::Tensor yv = at::empty({tile * n, p}, opts), yt = at::empty({tile * m, p}, opts);
      std::vector<scalar_t> r(n * m), e(n * m), vf(n), tf(m);
      std::vector<scalar_t> inv(std::max(n, m)), total(std::max(n, m)), coef(std::max(n, m));
      std::vector<int64_t> rows_v(tile + 1), rows_t(tile + 1);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t q0 = job * tile, count = std::min(tile, pairs - q0);
        rows_v[0] = rows_t[0] = 0;
        for (int64_t q = 0; q < count; ++q) {
          const int64_t i = (q0 + q) / bt, j = (q0 + q) % bt;
          for (int64_t a = 0; a < n; ++a)
            std::memcpy(r.data() + a * m, rel_p + ((i * n + a) * bt + j) * m,
                        m * sizeof(scalar_t));
          int64_t nv = 0, nt = 0;
          for (int64_t a = 0; a < n; ++a) nv += (vf[a] = vm_p[i * n + a]) != 0;
          for (int64_t b = 0; b < m; ++b) nt += (tf[b] = tm_p[j * m + b]) != 0;
          rows_v[q + 1] = rows_v[q] + nv;
          rows_t[q + 1] = rows_t[q] + nt;
          auto rows = d == 64 ? local_pair_rows<scalar_t, 64>
                    : d == 128 ? local_pair_rows<scalar_t, 128> : local_pair_rows<scalar_t, 0>;
          rows(r.data(), v_p + i * n * d, vf.data(), t_p + j * m * d, tf.data(), n, m, d,
               scalar_t(lambda), zv.data_ptr<scalar_t>() + rows_v[q] * d,
               zt.data_ptr<scalar_t>() + rows_t[q] * d, e.data(), inv.data(), total.data());
        }
        // W(x - u)^2 of every row of the tile: two GEMMs. Inside a parallel region
        // at::mm runs on one thread: the threads share the tiles, not a GEMM.
        if (rows_v[count] > 0) {
          at::Tensor y = yv.narrow(0, 0, rows_v[count]);
          at::mm_out(y, zv.narrow(0, 0, rows_v[count]), wv_t);
        }
        if (rows_t[count] > 0) {
          at::Tensor y = yt.narrow(0, 0, rows_t[count]);
          at::mm_out(y, zt.narrow(0, 0, rows_t[count]), wt_t);
        }
        auto unit_mean = p == 64 ? add_unit_mean<scalar_t, 64> : add_unit_mean<scalar_t, 0>;
        const scalar_t* yv_p = yv.data_ptr<scalar_t>();
        const scalar_t* yt_p = yt.data_ptr<scalar_t>();
        for (int64_t q = 0; q < count; ++q) {
          scalar_t* o = out_p + (q0 + q) * p;
          unit_mean(yv_p + rows_v[q] * p, rows_v[q + 1] - rows_v[q], p, o, coef.data());
          unit_mean(yt_p + rows_t[q] * p, rows_t[q + 1] - rows_t[q], p, o, coef.data());
        }
      }
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("cross_gru_recur", &cross_gru_recur,
             "eq 26's per-pair GRU recurrence, fused (see cccl_lite.reason.CrossGRU.fast_recur)");
  module.def("local_branch", &local_branch,
             "Branch 2's sim^O (eqs 17-20), fused (see cccl_lite.align.LocalBranch.fast_forward)");
}
