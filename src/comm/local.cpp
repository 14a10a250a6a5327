// The in-process communicator: P virtual ranks as threads sharing a World.
//
// Point-to-point: isend copies the bytes into the receiver's mailbox (keyed by
// source and tag, FIFO) and completes at once; irecv completes when a matching
// message is there and has been copied out. Collectives: every rank publishes
// a pointer to its contribution, meets the others at a barrier, reads what it
// needs directly from the others' buffers, and meets them again before anyone
// may reuse a buffer.
//
// Failure: abort() or an exception on any rank marks the World aborted; every
// blocked call on every rank then throws Error within one poll interval.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"

namespace ringattn {

// Dropping a pending request abandons it. That only happens while unwinding
// after an error, which ends the job; waiting there could block forever on a
// peer that is itself waiting for this rank.
Request& Request::operator=(Request&& o) noexcept {
  impl_ = std::move(o.impl_);
  return *this;
}

Request::~Request() = default;

void Request::wait() {
  if (!impl_) return;
  std::unique_ptr<Impl> impl = std::move(impl_);  // completed or failed: not pending any more
  impl->wait();
}

bool Request::test() {
  if (!impl_) return true;
  if (!impl_->test()) return false;
  impl_.reset();
  return true;
}

namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);

// One message's bytes in the world's LocalMemory.
class Message {
 public:
  Message(const LocalMemory& mem, std::size_t bytes)
      : mem_(&mem), bytes_(bytes), p_(bytes > 0 ? mem.alloc(bytes) : nullptr) {
    if (bytes > 0 && p_ == nullptr)
      throw Error(
          fmt::format("local comm: out of {} memory for a {}-byte message", mem.name, bytes));
  }
  Message(Message&& o) noexcept : mem_(o.mem_), bytes_(o.bytes_), p_(o.p_) { o.p_ = nullptr; }
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  Message& operator=(Message&&) = delete;
  ~Message() {
    if (p_ != nullptr) mem_->release(p_, bytes_);
  }
  void* data() const { return p_; }
  std::size_t size() const { return bytes_; }

 private:
  const LocalMemory* mem_;
  std::size_t bytes_;
  void* p_;
};

struct World {
  World(int n, const LocalMemory& m) : size(n), memory(m), slots(static_cast<std::size_t>(n)) {}
  const int size;
  const LocalMemory memory;
  std::mutex mu;
  std::condition_variable cv;
  bool aborted = false;
  std::string abort_message;
  // mailbox[(dst, src, tag)] = FIFO of messages
  std::map<std::tuple<int, int, int>, std::deque<Message>> mail;
  // barrier
  int arrived = 0;
  uint64_t generation = 0;
  // collective contributions
  struct Slot {
    const void* data = nullptr;
    const std::vector<std::size_t>* counts = nullptr;
  };
  std::vector<Slot> slots;

  void check_locked() const {
    if (aborted) throw Error(abort_message);
  }
  // Waits on cv until pred() holds; throws if the world is aborted meanwhile.
  template <class Pred>
  void wait_locked(std::unique_lock<std::mutex>& lk, Pred pred) {
    while (!pred()) {
      check_locked();
      cv.wait_for(lk, kPoll);
    }
    check_locked();
  }
  void abort(const std::string& msg) {
    std::lock_guard<std::mutex> lk(mu);
    if (!aborted) {
      aborted = true;
      abort_message = msg;
    }
    cv.notify_all();
  }
  void barrier() {
    std::unique_lock<std::mutex> lk(mu);
    check_locked();
    const uint64_t gen = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    wait_locked(lk, [&] { return generation != gen; });
  }
};

class LocalRecv final : public Request::Impl {
 public:
  LocalRecv(World& w, void* buf, std::size_t bytes, int me, int src, int tag)
      : w_(w), buf_(buf), bytes_(bytes), key_(me, src, tag) {}
  // The message is taken under the world's lock and copied out after it is
  // released: a device copy must not hold up the other ranks.
  void wait() override {
    std::optional<Message> msg;
    {
      std::unique_lock<std::mutex> lk(w_.mu);
      w_.wait_locked(lk, [&] { return ready_locked(); });
      msg.emplace(take_locked());
    }
    deliver(*msg);
  }
  bool test() override {
    std::optional<Message> msg;
    {
      std::unique_lock<std::mutex> lk(w_.mu);
      w_.check_locked();
      if (!ready_locked()) return false;
      msg.emplace(take_locked());
    }
    deliver(*msg);
    return true;
  }

 private:
  bool ready_locked() {
    auto it = w_.mail.find(key_);
    return it != w_.mail.end() && !it->second.empty();
  }
  Message take_locked() {
    auto& q = w_.mail[key_];
    Message msg = std::move(q.front());
    q.pop_front();
    return msg;
  }
  void deliver(const Message& msg) {
    if (msg.size() != bytes_)
      throw Error(fmt::format("local comm: rank {} expected {} bytes from rank {} (tag {}), got {}",
                              std::get<0>(key_), bytes_, std::get<1>(key_), std::get<2>(key_),
                              msg.size()));
    if (bytes_ > 0) w_.memory.copy(buf_, msg.data(), bytes_);
  }
  World& w_;
  void* buf_;
  std::size_t bytes_;
  std::tuple<int, int, int> key_;
};

class LocalComm final : public Communicator {
 public:
  LocalComm(World& w, int rank) : w_(w), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return w_.size; }
  std::string backend() const override { return "local"; }

  Request isend(const void* buf, std::size_t bytes, int dest, int tag) override {
    check_peer(dest, "isend");
    Message msg(w_.memory, bytes);
    if (bytes > 0) w_.memory.copy(msg.data(), buf, bytes);
    std::lock_guard<std::mutex> lk(w_.mu);
    w_.check_locked();
    w_.mail[{dest, rank_, tag}].push_back(std::move(msg));
    w_.cv.notify_all();
    return {};
  }

  Request irecv(void* buf, std::size_t bytes, int src, int tag) override {
    check_peer(src, "irecv");
    return Request(std::make_unique<LocalRecv>(w_, buf, bytes, rank_, src, tag));
  }

  void allreduce(double* data, std::size_t n, ReduceOp op) override { reduce(data, n, op); }
  void allreduce(int64_t* data, std::size_t n, ReduceOp op) override { reduce(data, n, op); }

  void allgather(const void* in, std::size_t bytes, void* out) override {
    std::vector<std::size_t> counts(static_cast<std::size_t>(w_.size), bytes);
    allgatherv(in, counts, out);
  }

  void allgatherv(const void* in, const std::vector<std::size_t>& counts, void* out) override {
    publish(in, nullptr);
    char* dst = static_cast<char*>(out);
    for (int r = 0; r < w_.size; ++r) {
      const std::size_t n = counts[static_cast<std::size_t>(r)];
      if (n > 0) w_.memory.copy(dst, w_.slots[static_cast<std::size_t>(r)].data, n);
      dst += n;
    }
    w_.barrier();
  }

  void alltoallv(const void* in, const std::vector<std::size_t>& send_counts, void* out,
                 const std::vector<std::size_t>& recv_counts) override {
    publish(in, &send_counts);
    char* dst = static_cast<char*>(out);
    for (int r = 0; r < w_.size; ++r) {
      const World::Slot& s = w_.slots[static_cast<std::size_t>(r)];
      std::size_t off = 0;  // where rank r's piece for me starts in its send buffer
      for (int k = 0; k < rank_; ++k) off += (*s.counts)[static_cast<std::size_t>(k)];
      const std::size_t n = (*s.counts)[static_cast<std::size_t>(rank_)];
      if (n != recv_counts[static_cast<std::size_t>(r)])
        throw Error(
            fmt::format("local comm: alltoallv: rank {} sends {} bytes to rank {}, which "
                        "expects {}",
                        r, n, rank_, recv_counts[static_cast<std::size_t>(r)]));
      if (n > 0) w_.memory.copy(dst, static_cast<const char*>(s.data) + off, n);
      dst += n;
    }
    w_.barrier();
  }

  void barrier() override { w_.barrier(); }

  [[noreturn]] void abort(const std::string& message, int /*exit_code*/) override {
    const std::string msg = fmt::format("rank {}: {}", rank_, message);
    w_.abort(msg);
    throw Error(msg);
  }

 private:
  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= w_.size)
      throw Error(fmt::format("local comm: {} to rank {} of {}", what, peer, w_.size));
  }
  void publish(const void* data, const std::vector<std::size_t>* counts) {
    {
      std::lock_guard<std::mutex> lk(w_.mu);
      w_.slots[static_cast<std::size_t>(rank_)] = {data, counts};
    }
    w_.barrier();
  }
  template <class T>
  void reduce(T* data, std::size_t n, ReduceOp op) {
    std::vector<T> all(n * static_cast<std::size_t>(w_.size));
    allgather(data, n * sizeof(T), all.data());
    for (std::size_t i = 0; i < n; ++i) {
      T acc = all[i];
      for (int r = 1; r < w_.size; ++r) {
        const T x = all[static_cast<std::size_t>(r) * n + i];
        acc = op == ReduceOp::sum   ? acc + x
              : op == ReduceOp::max ? std::max(acc, x)
                                    : std::min(acc, x);
      }
      data[i] = acc;
    }
  }
  World& w_;
  int rank_;
};

}  // namespace

LocalMemory host_local_memory() {
  LocalMemory m;
  m.name = "host";
  m.alloc = [](std::size_t bytes) { return std::malloc(bytes); };
  m.release = [](void* p, std::size_t) { std::free(p); };
  m.copy = [](void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); };
  return m;
}

void run_local(int ranks, const std::function<void(Communicator&)>& fn) {
  run_local(ranks, fn, host_local_memory());
}

void run_local(int ranks, const std::function<void(Communicator&)>& fn, const LocalMemory& memory) {
  if (ranks < 1)
    throw FieldError("ranks", fmt::format("expected >= 1 in-process ranks, got {}", ranks));
  if (!memory.alloc || !memory.release || !memory.copy)
    throw Error(fmt::format("local comm: memory '{}' lacks alloc, release or copy", memory.name));
  World world(ranks, memory);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      LocalComm comm(world, r);
      try {
        fn(comm);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
        world.abort(fmt::format("rank {}: {}", r, e.what()));
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
        world.abort(fmt::format("rank {}: unknown error", r));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (world.aborted) throw Error(world.abort_message);
}

}  // namespace ringattn
