#include "stages/block_means.hpp"

#include <algorithm>
#include <cstring>

#include "ringattn/error.hpp"

namespace ringattn::stage {
namespace {

bool shared_key(const Mask& m, int64_t kp) {
  return kp < m.sinks || m.in_global(kp);
}

// The owner of every block: the rank holding its first position (striped: b mod P).
std::vector<int> block_owners(const Layout& l, int64_t s, int64_t nb) {
  std::vector<int> owner(static_cast<std::size_t>(nb), 0);
  for (int64_t b = 0; b < nb; ++b) {
    if (l.kind() == LayoutKind::striped) {
      owner[static_cast<std::size_t>(b)] = static_cast<int>(b % l.ranks());
      continue;
    }
    for (int x = 0; x < l.ranks(); ++x)
      if (l.local_index(x, b * s) >= 0) {
        owner[static_cast<std::size_t>(b)] = x;
        break;
      }
  }
  return owner;
}

}  // namespace

BlockMeans gather_block_means(Communicator& comm, const RingProblem& p, int64_t s,
                              bool exclude_shared, bool with_v) {
  const int np = comm.size(), r = comm.rank();
  const Layout& kvl = *p.kv_layout;
  const int64_t row = p.hkv * p.head_dim, nb = p.nk / s + (p.nk % s != 0 ? 1 : 0);
  const int64_t nv = with_v ? 2 : 1, nloc = kvl.tokens(r);
  const std::size_t esz = dtype_size(p.dtype);
  BlockMeans out;
  out.size = s, out.blocks = nb;
  const std::vector<int> owner = block_owners(kvl, s, nb);

  // 1. Partial sums of the blocks this rank touches, as records
  //    [block, count, K sums [B][row], V sums [B][row]] of doubles.
  std::vector<int64_t> touched;
  for (const Segment& seg : kvl.segments(r))
    if (seg.count > 0)
      for (int64_t b = seg.start / s; b <= seg.last() / s; ++b) touched.push_back(b);
  std::sort(touched.begin(), touched.end(), [&](int64_t a, int64_t b) {
    const int oa = owner[static_cast<std::size_t>(a)], ob = owner[static_cast<std::size_t>(b)];
    return oa != ob ? oa < ob : a < b;
  });
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  const int64_t rec = 2 + nv * p.batch * row;
  Buffer part(static_cast<std::size_t>(std::max<int64_t>(1, touched.size() * rec)) * sizeof(double),
              "block sums");
  double* ps = part.as<double>();
  std::fill(ps, ps + touched.size() * rec, 0.0);
  std::vector<std::pair<int64_t, int64_t>> by_block;  // (block, slot), sorted by block
  for (std::size_t i = 0; i < touched.size(); ++i) {
    ps[i * rec] = double(touched[i]);
    by_block.emplace_back(touched[i], static_cast<int64_t>(i));
  }
  std::sort(by_block.begin(), by_block.end());
  auto slot = [&](int64_t b) {
    return std::lower_bound(by_block.begin(), by_block.end(), std::pair<int64_t, int64_t>{b, 0})
        ->second;
  };
  for (const Segment& seg : kvl.segments(r)) {
    int64_t cur_block = -1, cur = -1;
    for (int64_t i = 0; i < seg.count; ++i) {
      const int64_t kp = seg.start + i * seg.stride;
      if (exclude_shared && shared_key(p.mask, kp)) continue;
      if (kp / s != cur_block) cur_block = kp / s, cur = slot(cur_block);
      double* rs = ps + cur * rec;
      rs[1] += 1.0;
      const int64_t li = seg.local_offset + i;
      for (int64_t b = 0; b < p.batch; ++b) {
        const std::size_t src = static_cast<std::size_t>((b * nloc + li) * row);
        double* ks = rs + 2 + b * row;
        for (int64_t e = 0; e < row; ++e)
          ks[e] += load_as_f32(p.k, p.dtype, src + static_cast<std::size_t>(e));
        if (with_v) {
          double* vs = rs + 2 + (p.batch + b) * row;
          for (int64_t e = 0; e < row; ++e)
            vs[e] += load_as_f32(p.v, p.dtype, src + static_cast<std::size_t>(e));
        }
      }
    }
  }

  // 2. To the owners.
  std::vector<std::size_t> send(static_cast<std::size_t>(np), 0),
      recv(static_cast<std::size_t>(np));
  for (int64_t b : touched)
    send[static_cast<std::size_t>(owner[static_cast<std::size_t>(b)])] +=
        static_cast<std::size_t>(rec) * sizeof(double);
  std::vector<uint64_t> mine(send.begin(), send.end()), all(static_cast<std::size_t>(np * np));
  comm.allgather(mine.data(), mine.size() * sizeof(uint64_t), all.data());
  std::size_t in_bytes = 0;
  for (int x = 0; x < np; ++x) {
    recv[static_cast<std::size_t>(x)] = all[static_cast<std::size_t>(x * np + r)];
    in_bytes += recv[static_cast<std::size_t>(x)];
  }
  Buffer in(std::max<std::size_t>(in_bytes, 1), "block sums received");
  comm.alltoallv(ps, send, in.data(), recv);
  for (int x = 0; x < np; ++x)
    if (x != r) out.bytes_sent += static_cast<int64_t>(send[static_cast<std::size_t>(x)]);
  part = Buffer();

  // 3. The owner's means, rounded to the storage dtype: records [K [B][row], V [B][row]].
  std::vector<int64_t> owned;
  for (int64_t b = 0; b < nb; ++b)
    if (owner[static_cast<std::size_t>(b)] == r) owned.push_back(b);
  const int64_t acc_rec = 1 + nv * p.batch * row;
  std::vector<double> acc(owned.size() * static_cast<std::size_t>(acc_rec), 0.0);
  const double* rin = in.as<double>();
  for (std::size_t i = 0; i < in_bytes / sizeof(double); i += static_cast<std::size_t>(rec)) {
    const int64_t b = static_cast<int64_t>(rin[i]);
    const auto it = std::lower_bound(owned.begin(), owned.end(), b);
    if (it == owned.end() || *it != b) throw Error("hierarchy: block sums sent to a non-owner");
    double* a = acc.data() + (it - owned.begin()) * acc_rec;
    for (int64_t e = 0; e < acc_rec; ++e) a[e] += rin[i + 1 + static_cast<std::size_t>(e)];
  }
  in = Buffer();
  const std::size_t out_rec = static_cast<std::size_t>(nv * p.batch * row) * esz;
  Buffer means(std::max<std::size_t>(owned.size() * out_rec, 1), "block means");
  std::vector<int64_t> counts(owned.size());
  for (std::size_t i = 0; i < owned.size(); ++i) {
    const double* a = acc.data() + static_cast<int64_t>(i) * acc_rec;
    counts[i] = static_cast<int64_t>(a[0]);
    const double inv = a[0] > 0 ? 1.0 / a[0] : 0.0;
    for (int64_t e = 0; e < nv * p.batch * row; ++e)
      store_from_f32(means.as<char>() + i * out_rec, p.dtype, static_cast<std::size_t>(e),
                     static_cast<float>(a[1 + e] * inv));
  }

  // 4. All-gather the owners' means and counts; lay the table out [B, blocks, Hkv, D].
  std::vector<std::size_t> mcounts(static_cast<std::size_t>(np)),
      ccounts(static_cast<std::size_t>(np));
  std::vector<std::vector<int64_t>> owned_by(static_cast<std::size_t>(np));
  for (int64_t b = 0; b < nb; ++b)
    owned_by[static_cast<std::size_t>(owner[static_cast<std::size_t>(b)])].push_back(b);
  std::size_t mtotal = 0;
  for (int x = 0; x < np; ++x) {
    const std::size_t n = owned_by[static_cast<std::size_t>(x)].size();
    mcounts[static_cast<std::size_t>(x)] = n * out_rec;
    ccounts[static_cast<std::size_t>(x)] = n * sizeof(int64_t);
    mtotal += n * out_rec;
  }
  Buffer gathered(std::max<std::size_t>(mtotal, 1), "block means gathered");
  std::vector<int64_t> gcounts(static_cast<std::size_t>(nb));
  comm.allgatherv(means.data(), mcounts, gathered.data());
  comm.allgatherv(counts.data(), ccounts, gcounts.data());
  out.bytes_sent += static_cast<int64_t>((owned.size() * (out_rec + sizeof(int64_t))) *
                                         static_cast<std::size_t>(np - 1));
  const std::size_t table = static_cast<std::size_t>(p.batch * nb * row) * esz;
  out.k = Buffer(std::max<std::size_t>(table, 1), "block means K");
  if (with_v) out.v = Buffer(std::max<std::size_t>(table, 1), "block means V");
  out.count.assign(static_cast<std::size_t>(nb), 0);
  const std::size_t row_bytes = static_cast<std::size_t>(row) * esz;
  const char* g = gathered.as<char>();
  std::size_t ci = 0;
  for (int x = 0; x < np; ++x)
    for (int64_t b : owned_by[static_cast<std::size_t>(x)]) {
      out.count[static_cast<std::size_t>(b)] = gcounts[ci++];
      for (int64_t bb = 0; bb < p.batch; ++bb) {
        const std::size_t dst = static_cast<std::size_t>(bb * nb + b) * row_bytes;
        std::memcpy(out.k.as<char>() + dst, g + static_cast<std::size_t>(bb) * row_bytes,
                    row_bytes);
        if (with_v)
          std::memcpy(out.v.as<char>() + dst,
                      g + static_cast<std::size_t>(p.batch + bb) * row_bytes, row_bytes);
      }
      g += out_rec;
    }
  return out;
}

}  // namespace ringattn::stage
