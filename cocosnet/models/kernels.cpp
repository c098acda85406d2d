// CPU kernels for the PatchMatch search (loaded by kernels.py).
//
// scores_forward / scores_backward: fused bilinear sample-and-dot for the candidate scores.
// score[b, y, x, k] = <query[b, y, x, :], bilinear(key[b], coords[b, y, x, k])>, with the key
// channels-last, so each of a candidate's 4 corners is one contiguous run of C values read once;
// nothing of size (B, C, H, W, K) is ever built. Sampling matches
// F.grid_sample(mode="bilinear", padding_mode="border", align_corners=True) on pixel coordinates,
// including its gradient convention: a coordinate on or beyond the border gets no gradient.
//
// select_top_k: the de-duplicated top-k of each pixel's candidates. search_step: a whole PatchMatch
// iteration per pixel (new candidates, their scores, the top-k), with no candidate tensor built.
// weighted_samples: a weighted sum of bilinear samples at each pixel's candidates (the warp).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Corners {
  int64_t off[4];   // offsets of (y0, x0), (y0, x1), (y1, x0), (y1, x1) in the key, or -1 when outside
  double w[4];      // bilinear weights
  double fx, fy;    // fractional parts
  bool grad_x, grad_y;  // false on or beyond the border (grid_sample's convention)
};

template <typename scalar_t>
inline Corners corners(scalar_t x, scalar_t y, int64_t hk, int64_t wk, int64_t c) {
  Corners r;
  const double xmax = static_cast<double>(wk - 1), ymax = static_cast<double>(hk - 1);
  double xd = static_cast<double>(x), yd = static_cast<double>(y);
  r.grad_x = xd > 0.0 && xd < xmax;
  r.grad_y = yd > 0.0 && yd < ymax;
  xd = std::min(std::max(xd, 0.0), xmax);
  yd = std::min(std::max(yd, 0.0), ymax);
  const int64_t x0 = static_cast<int64_t>(std::floor(xd)), y0 = static_cast<int64_t>(std::floor(yd));
  r.fx = xd - x0;
  r.fy = yd - y0;
  const int64_t xs[2] = {x0, x0 + 1}, ys[2] = {y0, y0 + 1};
  const double wx[2] = {1.0 - r.fx, r.fx}, wy[2] = {1.0 - r.fy, r.fy};
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 2; ++i) {
      const bool inside = xs[i] < wk && ys[j] < hk;
      r.off[2 * j + i] = inside ? (ys[j] * wk + xs[i]) * c : -1;
      r.w[2 * j + i] = wy[j] * wx[i];
    }
  }
  return r;
}

template <typename scalar_t>
inline scalar_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  // Independent partial sums let the compiler vectorise without reassociating one float sum.
  scalar_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  }
  scalar_t total = 0;
  for (; i < n; ++i) total += a[i] * b[i];
  for (int j = 0; j < 8; ++j) total += s[j];
  return total;
}

void check(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& coords) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && coords.dim() == 5 && coords.size(4) == 2,
              "expected query (B, H, W, C), key (B, Hk, Wk, C), coords (B, H, W, K, 2)");
  TORCH_CHECK(query.is_contiguous() && key.is_contiguous() && coords.is_contiguous(), "inputs must be contiguous");
  TORCH_CHECK(query.size(0) == key.size(0) && query.size(3) == key.size(3), "query and key disagree on B or C");
  TORCH_CHECK(coords.size(0) == query.size(0) && coords.size(1) == query.size(1) && coords.size(2) == query.size(2),
              "coords must be (B, H, W, K, 2) for a query (B, H, W, C)");
  TORCH_CHECK(query.scalar_type() == key.scalar_type() && query.scalar_type() == coords.scalar_type(),
              "query, key and coords must share a dtype");
}

// One candidate's score; scores_forward and search_step both use it, so they round alike.
template <typename scalar_t>
inline scalar_t candidate_score(const scalar_t* qp, const scalar_t* kb, scalar_t x, scalar_t y, int64_t hk, int64_t wk,
                                int64_t c) {
  const Corners r = corners(x, y, hk, wk, c);
  double s = 0.0;
  for (int i = 0; i < 4; ++i) {
    if (r.off[i] >= 0 && r.w[i] != 0.0) s += r.w[i] * dot(qp, kb + r.off[i], c);
  }
  return static_cast<scalar_t>(s);
}

}  // namespace

// query (B, H, W, C), key (B, Hk, Wk, C), coords (B, H, W, K, 2) (x, y) -> scores (B, H, W, K)
torch::Tensor scores_forward(torch::Tensor query, torch::Tensor key, torch::Tensor coords) {
  check(query, key, coords);
  const int64_t b = query.size(0), h = query.size(1), w = query.size(2), c = query.size(3);
  const int64_t hk = key.size(1), wk = key.size(2), k = coords.size(3);
  auto out = torch::empty({b, h, w, k}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "scores_forward", [&] {
    const scalar_t* q = query.data_ptr<scalar_t>();
    const scalar_t* kk = key.data_ptr<scalar_t>();
    const scalar_t* xy = coords.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, b * h * w, 64, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* qp = q + p * c;
        const scalar_t* kb = kk + (p / (h * w)) * hk * wk * c;
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t* pos = xy + (p * k + j) * 2;
          o[p * k + j] = candidate_score(qp, kb, pos[0], pos[1], hk, wk, c);
        }
      }
    });
  });
  return out;
}

// grad (B, H, W, K) -> grad_query (B, H, W, C), grad_key (B, Hk, Wk, C), grad_coords (B, H, W, K, 2)
std::vector<torch::Tensor> scores_backward(torch::Tensor grad, torch::Tensor query, torch::Tensor key,
                                           torch::Tensor coords) {
  check(query, key, coords);
  grad = grad.contiguous();
  const int64_t b = query.size(0), h = query.size(1), w = query.size(2), c = query.size(3);
  const int64_t hk = key.size(1), wk = key.size(2), k = coords.size(3);
  const int64_t threads = at::get_num_threads();
  auto grad_query = torch::zeros_like(query);
  // One key-gradient buffer per thread: pixels scatter into shared key positions.
  auto grad_key_parts = torch::zeros({threads, b, hk, wk, c}, key.options());
  auto grad_coords = torch::zeros_like(coords);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "scores_backward", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* q = query.data_ptr<scalar_t>();
    const scalar_t* kk = key.data_ptr<scalar_t>();
    const scalar_t* xy = coords.data_ptr<scalar_t>();
    scalar_t* gq = grad_query.data_ptr<scalar_t>();
    scalar_t* gk_all = grad_key_parts.data_ptr<scalar_t>();
    scalar_t* gxy = grad_coords.data_ptr<scalar_t>();
    at::parallel_for(0, b * h * w, 64, [&](int64_t begin, int64_t end) {
      scalar_t* gk = gk_all + at::get_thread_num() * b * hk * wk * c;
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* qp = q + p * c;
        scalar_t* gqp = gq + p * c;
        const int64_t key_base = (p / (h * w)) * hk * wk * c;
        const scalar_t* kb = kk + key_base;
        scalar_t* gkb = gk + key_base;
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t gj = g[p * k + j];
          if (gj == 0) continue;
          const scalar_t* pos = xy + (p * k + j) * 2;
          const Corners r = corners(pos[0], pos[1], hk, wk, c);
          double d[4] = {0.0, 0.0, 0.0, 0.0};
          for (int i = 0; i < 4; ++i) {
            if (r.off[i] < 0) continue;
            d[i] = dot(qp, kb + r.off[i], c);
            const scalar_t wq = static_cast<scalar_t>(gj * r.w[i]);
            if (wq == 0) continue;
            const scalar_t* kc = kb + r.off[i];
            scalar_t* gkc = gkb + r.off[i];
            for (int64_t ch = 0; ch < c; ++ch) {
              gqp[ch] += wq * kc[ch];
              gkc[ch] += wq * qp[ch];
            }
          }
          if (r.grad_x) gxy[(p * k + j) * 2] = static_cast<scalar_t>(gj * ((1.0 - r.fy) * (d[1] - d[0]) + r.fy * (d[3] - d[2])));
          if (r.grad_y) gxy[(p * k + j) * 2 + 1] = static_cast<scalar_t>(gj * ((1.0 - r.fx) * (d[2] - d[0]) + r.fx * (d[3] - d[1])));
        }
      }
    });
  });
  return {grad_query, grad_key_parts.sum(0), grad_coords};
}

namespace {

// Per pixel: drop candidates that share a half-pixel cell with a better-scoring one and keep the
// best k, best first (ties by position in the list). Where fewer than k cells are distinct, the best
// of the dropped duplicates fill the rest, as in the tensor version. s (n), c (n, 2) -> os (k), oc (k, 2).
// The order is a stable sort by score, best first; an insertion sort into buffers made once per
// thread, since std::stable_sort allocates a buffer on every call (one per pixel).
template <typename scalar_t>
struct PixelSelect {
  std::vector<int64_t> order, kept, dropped;
  std::vector<double> ranks;
  std::vector<std::pair<scalar_t, scalar_t>> cells;

  explicit PixelSelect(int64_t n) : order(n), ranks(n), cells(n) {
    kept.reserve(n);
    dropped.reserve(n);
  }

  void operator()(const scalar_t* s, const scalar_t* c, int64_t n, int64_t k, scalar_t* os, scalar_t* oc) {
    // NaN ranks last (a NaN in a comparison would break the sort's ordering).
    for (int64_t i = 0; i < n; ++i) ranks[i] = std::isnan(s[i]) ? -INFINITY : static_cast<double>(s[i]);
    for (int64_t i = 0; i < n; ++i) {
      int64_t j = i;
      for (; j > 0 && ranks[order[j - 1]] < ranks[i]; --j) order[j] = order[j - 1];  // ties keep list order
      order[j] = i;
    }
    for (int64_t i = 0; i < n; ++i) cells[i] = {std::nearbyint(c[2 * i] * 2), std::nearbyint(c[2 * i + 1] * 2)};
    kept.clear();
    dropped.clear();
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = order[j];
      bool duplicate = false;
      for (int64_t other : kept) duplicate = duplicate || cells[other] == cells[i];
      (duplicate ? dropped : kept).push_back(i);
      if (static_cast<int64_t>(kept.size()) == k) break;
    }
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = j < static_cast<int64_t>(kept.size()) ? kept[j] : dropped[j - kept.size()];
      os[j] = s[i];
      oc[2 * j] = c[2 * i];
      oc[2 * j + 1] = c[2 * i + 1];
    }
  }
};

}  // namespace

// coords (B, H, W, N, 2), scores (B, H, W, N) -> coords (B, H, W, k, 2), scores (B, H, W, k)
std::vector<torch::Tensor> select_top_k(torch::Tensor coords, torch::Tensor scores, int64_t k) {
  TORCH_CHECK(coords.dim() == 5 && coords.size(4) == 2 && scores.dim() == 4, "expected coords (B, H, W, N, 2) and scores (B, H, W, N)");
  TORCH_CHECK(coords.sizes().slice(0, 4) == scores.sizes(), "coords and scores disagree on (B, H, W, N)");
  TORCH_CHECK(coords.scalar_type() == scores.scalar_type(), "coords and scores must share a dtype");
  coords = coords.contiguous();
  scores = scores.contiguous();
  const int64_t pixels = scores.size(0) * scores.size(1) * scores.size(2), n = scores.size(3);
  k = std::min(k, n);
  auto out_coords = torch::empty({scores.size(0), scores.size(1), scores.size(2), k, 2}, coords.options());
  auto out_scores = torch::empty({scores.size(0), scores.size(1), scores.size(2), k}, scores.options());
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "select_top_k", [&] {
    const scalar_t* xy = coords.data_ptr<scalar_t>();
    const scalar_t* sc = scores.data_ptr<scalar_t>();
    scalar_t* oxy = out_coords.data_ptr<scalar_t>();
    scalar_t* osc = out_scores.data_ptr<scalar_t>();
    at::parallel_for(0, pixels, 256, [&](int64_t begin, int64_t end) {
      PixelSelect<scalar_t> select(n);
      for (int64_t p = begin; p < end; ++p) select(sc + p * n, xy + p * n * 2, n, k, osc + p * k, oxy + p * k * 2);
    });
  });
  return {out_coords, out_scores};
}

// search_step: one PatchMatch iteration per pixel, without building the candidate tensors: the best m
// candidates of the 4 neighbours shifted by the step to this pixel (left, right, up, down; at the
// border a pixel sees itself), the best candidate rounded to the pixel grid, the best candidate plus
// each jitter, all clamped to the key; these are scored and, with the current k, de-duplicated and cut
// to the best k. The same candidates, in the same order, with the same scores as
// patchmatch.search_step's tensor version.
// query (B, H, W, C), key (B, Hk, Wk, C), coords (B, H, W, K, 2) best first, scores (B, H, W, K),
// jitter (B, H, W, R, 2) -> coords (B, H, W, K, 2), scores (B, H, W, K)
std::vector<torch::Tensor> search_step(torch::Tensor query, torch::Tensor key, torch::Tensor coords,
                                       torch::Tensor scores, torch::Tensor jitter, int64_t m) {
  check(query, key, coords);
  TORCH_CHECK(scores.dim() == 4 && coords.sizes().slice(0, 4) == scores.sizes() && scores.is_contiguous() &&
              scores.scalar_type() == coords.scalar_type(), "scores must be contiguous (B, H, W, K) like coords");
  TORCH_CHECK(jitter.dim() == 5 && jitter.sizes().slice(0, 3) == coords.sizes().slice(0, 3) && jitter.size(4) == 2 &&
              jitter.is_contiguous() && jitter.scalar_type() == coords.scalar_type(),
              "jitter must be contiguous (B, H, W, R, 2) like coords");
  const int64_t b = query.size(0), h = query.size(1), w = query.size(2), c = query.size(3);
  const int64_t hk = key.size(1), wk = key.size(2), k = coords.size(3), r = jitter.size(3);
  TORCH_CHECK(m >= 1 && m <= k, "m must be in [1, K]");
  const int64_t n = k + 4 * m + 1 + r;
  auto out_coords = torch::empty_like(coords);
  auto out_scores = torch::empty_like(scores);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "search_step", [&] {
    const scalar_t* q = query.data_ptr<scalar_t>();
    const scalar_t* kk = key.data_ptr<scalar_t>();
    const scalar_t* xy = coords.data_ptr<scalar_t>();
    const scalar_t* sc = scores.data_ptr<scalar_t>();
    const scalar_t* jt = jitter.data_ptr<scalar_t>();
    scalar_t* oxy = out_coords.data_ptr<scalar_t>();
    scalar_t* osc = out_scores.data_ptr<scalar_t>();
    const scalar_t xmax = static_cast<scalar_t>(wk - 1), ymax = static_cast<scalar_t>(hk - 1);
    at::parallel_for(0, b * h * w, 64, [&](int64_t begin, int64_t end) {
      PixelSelect<scalar_t> select(n);
      std::vector<scalar_t> cand(2 * n), cand_scores(n);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t bi = p / (h * w), y = (p / w) % h, x = p % w;
        const scalar_t* qp = q + p * c;
        const scalar_t* kb = kk + bi * hk * wk * c;
        std::copy(xy + p * k * 2, xy + (p + 1) * k * 2, cand.begin());
        std::copy(sc + p * k, sc + (p + 1) * k, cand_scores.begin());
        int64_t at = k;
        const auto add = [&](scalar_t cx, scalar_t cy) {
          cand[2 * at] = std::min(std::max(cx, scalar_t(0)), xmax);
          cand[2 * at + 1] = std::min(std::max(cy, scalar_t(0)), ymax);
          ++at;
        };
        const int64_t sources[4] = {p - (x > 0 ? 1 : 0), p + (x < w - 1 ? 1 : 0), p - (y > 0 ? w : 0),
                                    p + (y < h - 1 ? w : 0)};
        const scalar_t steps[4][2] = {{1, 0}, {-1, 0}, {0, 1}, {0, -1}};
        for (int d = 0; d < 4; ++d) {
          for (int64_t j = 0; j < m; ++j) {
            const scalar_t* s = xy + (sources[d] * k + j) * 2;
            add(s[0] + steps[d][0], s[1] + steps[d][1]);
          }
        }
        const scalar_t* best = xy + p * k * 2;
        add(std::nearbyint(best[0]), std::nearbyint(best[1]));
        for (int64_t j = 0; j < r; ++j) add(best[0] + jt[(p * r + j) * 2], best[1] + jt[(p * r + j) * 2 + 1]);
        for (int64_t j = k; j < n; ++j) cand_scores[j] = candidate_score(qp, kb, cand[2 * j], cand[2 * j + 1], hk, wk, c);
        select(cand_scores.data(), cand.data(), n, k, osc + p * k, oxy + p * k * 2);
      }
    });
  });
  return {out_coords, out_scores};
}

// weighted_samples: sum_k weights[b, y, x, k] * bilinear(source[b], coords[b, y, x, k]) per pixel, sampled
// as scores_forward samples (grid_sample's border clamping, align_corners); forward only (a level's
// warp and the GRU's first input without autograd), with nothing of size (B, C, H, W, K) built.
// source (B, Hk, Wk, C), coords (B, H, W, K, 2), weights (B, H, W, K) -> (B, H, W, C)
torch::Tensor weighted_samples(torch::Tensor source, torch::Tensor coords, torch::Tensor weights) {
  TORCH_CHECK(source.dim() == 4 && coords.dim() == 5 && coords.size(4) == 2 && weights.dim() == 4 &&
              coords.size(0) == source.size(0) && coords.sizes().slice(0, 4) == weights.sizes(),
              "expected source (B, Hk, Wk, C), coords (B, H, W, K, 2), weights (B, H, W, K)");
  TORCH_CHECK(source.is_contiguous() && coords.is_contiguous() && weights.is_contiguous(), "inputs must be contiguous");
  TORCH_CHECK(source.scalar_type() == coords.scalar_type() && source.scalar_type() == weights.scalar_type(),
              "source, coords and weights must share a dtype");
  const int64_t b = coords.size(0), h = coords.size(1), w = coords.size(2), k = coords.size(3);
  const int64_t hk = source.size(1), wk = source.size(2), c = source.size(3);
  auto out = torch::empty({b, h, w, c}, source.options());
  AT_DISPATCH_FLOATING_TYPES(source.scalar_type(), "weighted_samples", [&] {
    const scalar_t* src = source.data_ptr<scalar_t>();
    const scalar_t* xy = coords.data_ptr<scalar_t>();
    const scalar_t* wt = weights.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, b * h * w, 64, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(c);
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* sb = src + (p / (h * w)) * hk * wk * c;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t* pos = xy + (p * k + j) * 2;
          const Corners r = corners(pos[0], pos[1], hk, wk, c);
          for (int i = 0; i < 4; ++i) {
            const double weight = wt[p * k + j] * r.w[i];
            if (r.off[i] < 0 || weight == 0.0) continue;
            const scalar_t* v = sb + r.off[i];
            for (int64_t ch = 0; ch < c; ++ch) acc[ch] += weight * v[ch];
          }
        }
        for (int64_t ch = 0; ch < c; ++ch) o[p * c + ch] = static_cast<scalar_t>(acc[ch]);
      }
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scores_forward", &scores_forward, "fused bilinear sample-and-dot candidate scores");
  m.def("scores_backward", &scores_backward, "gradients of scores_forward");
  m.def("select_top_k", &select_top_k, "de-duplicated top-k of PatchMatch candidates");
  m.def("search_step", &search_step, "one PatchMatch iteration: candidates, scores and de-duplicated top-k");
  m.def("weighted_samples", &weighted_samples, "weighted sum of bilinear samples at each pixel's candidates");
}
