// ringattn._core: the Python module's compiled part (nanobind). The package
// (python/ringattn/__init__.py) turns keyword arguments into the command
// line of `ringattn run` / `ringattn plan` and allocates the outputs; this file
// parses that command line with the CLI's own option table (same names,
// defaults, checks and messages), points the kernel or the job at the caller's
// arrays (no copy: C-contiguous CPU arrays only) and runs it without the GIL.
//
// Errors: a bad option or value is ValueError (the CLI's message, naming the
// option); a failed check or a rank's error is RuntimeError; Ctrl-C during
// attention() or ring_attention() stops the work and raises KeyboardInterrupt
// (under MPI the launcher's signal ends the ranks instead).
#include <fmt/format.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cli/options.hpp"
#include "cli/plan_report.hpp"
#include "cli/run_config.hpp"
#include "cli/run_report.hpp"
#include "ringattn/backward.hpp"
#include "ringattn/comm_mpi.hpp"
#include "ringattn/dtype.hpp"
#include "ringattn/error.hpp"
#include "ringattn/interrupt.hpp"
#include "ringattn/job.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/tempfiles.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace ringattn::python {
namespace {

// Any dtype: the package passes the storage dtype's name beside it (a NumPy
// bfloat16 array arrives as its uint16 view).
using Array = nb::ndarray<nb::c_contig, nb::device::cpu>;

// Runs work() on a worker thread without the GIL while this (Python's) thread
// looks for signals every 50 ms: Ctrl-C asks the kernel and the ring to stop
// (ringattn/interrupt.hpp), waits for them, and raises KeyboardInterrupt.
template <class F>
void interruptible(F&& work) {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  std::thread worker([&] {
    try {
      work();
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mu);
    done = true;
    cv.notify_all();
  });
  for (;;) {
    {
      nb::gil_scoped_release unlocked;
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return done; });
      if (done) break;
    }
    if (PyErr_CheckSignals() != 0) {  // KeyboardInterrupt (or the handler's error) is set
      request_interrupt();
      {
        nb::gil_scoped_release unlocked;
        worker.join();
      }
      clear_interrupt();
      throw nb::python_error();
    }
  }
  worker.join();
  if (error) std::rethrow_exception(error);
}

// Parses a command line (argv[0] is the command's name) against `spec`.
cli::ParsedOptions parse(const cli::CommandSpec& spec, const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::optional<cli::ParsedOptions> opt =
      cli::parse_options(spec, static_cast<int>(args.size()), argv.data());
  if (!opt) throw cli::UsageError("help was asked for: see `ringattn " + args[0] + " --help`");
  return std::move(*opt);
}

// The array holds `elems` elements of `dtype` (the package checked the shapes;
// this keeps a wrong call from reading past the end).
const void* checked(const Array& a, const char* name, int64_t elems, DType dtype) {
  if (static_cast<int64_t>(a.size()) != elems || a.itemsize() != dtype_size(dtype))
    throw cli::UsageError(
        fmt::format("{}: expected {} elements of {} ({} bytes each), got {} of {}", name, elems,
                    dtype_name(dtype), dtype_size(dtype), a.size(), a.itemsize()));
  return a.data();
}

cli::RunConfig run_config(const std::vector<std::string>& args) {
  const cli::ParsedOptions opt = parse(cli::run_spec(), args);
  return cli::with_option_names([&] { return cli::make_run_config(opt); });
}

// The caller's q, k, v for cfg's problem; o (cfg's dtype) and lse (float32) when given.
JobArrays arrays_for(const cli::RunConfig& cfg, const Array& q, const Array& k, const Array& v,
                     const std::optional<Array>& o, const std::optional<Array>& lse) {
  JobArrays a;
  const int64_t qe = cfg.batch * cfg.nq * cfg.hq * cfg.head_dim;
  const int64_t ke = cfg.batch * cfg.nk * cfg.hkv * cfg.head_dim;
  a.q = checked(q, "q", qe, cfg.dtype);
  a.k = checked(k, "k", ke, cfg.dtype);
  a.v = checked(v, "v", ke, cfg.dtype);
  if (o) a.o = const_cast<void*>(checked(*o, "o", qe, cfg.dtype));
  if (lse)
    a.lse = static_cast<float*>(
        const_cast<void*>(checked(*lse, "lse", cfg.batch * cfg.hq * cfg.nq, DType::f32)));
  return a;
}

// ring_attention: the job on `ranks` in-process ranks over the caller's arrays;
// the run's --metrics records (JSON lines: one per rank, then the summary).
// With d_o (the backward: --backward), dq, dk and dv get the gradients (float32).
std::vector<std::string> run(const std::vector<std::string>& args, const Array& q, const Array& k,
                             const Array& v, std::optional<Array> o, std::optional<Array> lse,
                             int ranks, std::optional<Array> d_o, std::optional<Array> dq,
                             std::optional<Array> dk, std::optional<Array> dv) {
  const auto started = std::chrono::steady_clock::now();
  cli::RunConfig cfg = run_config(args);
  cfg.arrays = arrays_for(cfg, q, k, v, o, lse);
  const int64_t qe = cfg.batch * cfg.nq * cfg.hq * cfg.head_dim;
  const int64_t ke = cfg.batch * cfg.nk * cfg.hkv * cfg.head_dim;
  const auto f32 = [](const std::optional<Array>& x, const char* name, int64_t n) {
    return x ? static_cast<float*>(const_cast<void*>(checked(*x, name, n, DType::f32))) : nullptr;
  };
  cfg.arrays.d_o = f32(d_o, "do", qe);
  cfg.arrays.dq = f32(dq, "dq", qe);
  cfg.arrays.dk = f32(dk, "dk", ke);
  cfg.arrays.dv = f32(dv, "dv", ke);
  cli::with_option_names([&] { cfg.validate(); });
  JobReport job;
  interruptible([&] { job = run_job_local(ranks, cfg); });
  const cli::RunReport report(
      cfg, std::move(job),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  if (!report.failure.empty())
    throw std::runtime_error(fmt::format(
        "option '--{}': {}", cli::option_for_field(report.failure_field), report.failure));
  std::vector<std::string> out;
  for (const cli::JsonObject& j : cli::run_records(report)) out.push_back(j.str());
  return out;
}

// The layout run options give for P ranks (flat: one level), of the queries
// (keys = false) or the keys: rank `rank`'s segments as (start, stride, count,
// local offset), in global token positions.
std::vector<std::array<int64_t, 4>> layout_segments(const std::vector<std::string>& args, int ranks,
                                                    int rank, bool keys) {
  const cli::RunConfig cfg = run_config(args);
  if (ranks < 1 || rank < 0 || rank >= ranks)
    throw cli::UsageError(
        fmt::format("rank {} of {} ranks: expected 0 <= rank < ranks", rank, ranks));
  const Layout l = Layout::of(cfg.layout, cfg, ranks, keys);
  std::vector<std::array<int64_t, 4>> out;
  for (const Segment& s : l.segments(rank))
    out.push_back({s.start, s.stride, s.count, s.local_offset});
  return out;
}

// ring_attention_mpi: this process is one rank of MPI_COMM_WORLD (mpi4py
// started MPI); q, k, v hold its tokens in the layout's local order, o and lse
// get its rows. Every rank calls it with the same options.
std::vector<std::string> run_mpi(const std::vector<std::string>& args, const Array& q,
                                 const Array& k, const Array& v, Array o, Array lse) {
  const auto started = std::chrono::steady_clock::now();
  if (!mpi_built()) throw cli::UsageError("this ringattn was built without MPI");
  cli::RunConfig cfg = run_config(args);
  if (cfg.scheme != CommScheme::flat || cfg.scheme_auto)
    throw cli::UsageError("option '--hierarchy': per-rank arrays run the flat ring (one level)");
  Communicator& comm = mpi_world();
  const int ranks = comm.size(), rank = comm.rank();
  const Layout ql = Layout::of(cfg.layout, cfg, ranks, false);
  const Layout kvl = Layout::of(cfg.layout, cfg, ranks, true);
  const int64_t nq = ql.tokens(rank), nkv = kvl.tokens(rank);
  JobArrays a;
  a.local = true;
  a.q = checked(q, "q", cfg.batch * nq * cfg.hq * cfg.head_dim, cfg.dtype);
  a.k = checked(k, "k", cfg.batch * nkv * cfg.hkv * cfg.head_dim, cfg.dtype);
  a.v = checked(v, "v", cfg.batch * nkv * cfg.hkv * cfg.head_dim, cfg.dtype);
  a.o = const_cast<void*>(checked(o, "o", cfg.batch * nq * cfg.hq * cfg.head_dim, cfg.dtype));
  a.lse = static_cast<float*>(
      const_cast<void*>(checked(lse, "lse", cfg.batch * cfg.hq * nq, DType::f32)));
  cfg.arrays = a;
  cli::with_option_names([&] { cfg.validate(); });
  JobReport job;
  {
    nb::gil_scoped_release unlocked;
    job = run_job(comm, cfg);
  }
  const cli::RunReport report(
      cfg, std::move(job),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  std::vector<std::string> out;
  for (const cli::JsonObject& j : cli::run_records(report)) out.push_back(j.str());
  return out;
}

// attention: one kernel call on the caller's arrays (the whole problem on this
// process's threads); O in the storage dtype, LSE float32.
void attention(const std::vector<std::string>& args, const Array& q, const Array& k, const Array& v,
               Array o, Array lse) {
  const cli::RunConfig cfg = run_config(args);
  const char* stage = cfg.hier.on()      ? "hierarchical aggregation and block routing"
                      : cfg.moe.on()     ? "the MoE stage"
                      : cfg.select.on()  ? "K/V selection"
                      : cfg.kv_wire.on() ? "quantized K/V"
                      : cfg.backward     ? "the backward pass"
                                         : nullptr;
  if (stage != nullptr)
    throw cli::UsageError(
        fmt::format("{} runs in ring_attention (the job), not in one kernel call", stage));
  const JobArrays a = arrays_for(cfg, q, k, v, o, lse);
  const AttentionArgs args_(cfg, a.q, a.k, a.v);
  KernelOptions kopt;
  kopt.threads = cfg.threads, kopt.isa = cfg.isa;
  const int64_t oe = cfg.batch * cfg.nq * cfg.hq * cfg.head_dim;
  interruptible([&] {
    if (cfg.dtype == DType::f32) {
      attention_forward(args_, static_cast<float*>(a.o), a.lse, kopt);
      return;
    }
    Buffer of(static_cast<std::size_t>(oe) * sizeof(float), "O (float32)");
    attention_forward(args_, of.as<float>(), a.lse, kopt);
    const float* src = of.as<float>();
    for (int64_t i = 0; i < oe; ++i)
      store_from_f32(a.o, cfg.dtype, static_cast<std::size_t>(i), src[i]);
  });
}

// attention_backward: the kernel's backward on the caller's arrays: o, lse and
// dO float32 (the forward's outputs and O's gradient); dq, dk, dv float32, written.
void attention_backward(const std::vector<std::string>& args, const Array& q, const Array& k,
                        const Array& v, const Array& o, const Array& lse, const Array& d_o,
                        Array dq, Array dk, Array dv) {
  const cli::RunConfig cfg = run_config(args);
  if (cfg.hier.on() || cfg.moe.on() || cfg.select.on() || cfg.kv_wire.on())
    throw cli::UsageError(
        "the backward pass covers plain attention under a mask (no hierarchy, MoE, K/V "
        "selection or quantized K/V)");
  const JobArrays a = arrays_for(cfg, q, k, v, std::nullopt, std::nullopt);
  const int64_t qe = cfg.batch * cfg.nq * cfg.hq * cfg.head_dim;
  const int64_t ke = cfg.batch * cfg.nk * cfg.hkv * cfg.head_dim;
  const auto f32 = [](const Array& x, const char* name, int64_t n) {
    return static_cast<float*>(const_cast<void*>(checked(x, name, n, DType::f32)));
  };
  const float* po = f32(o, "o", qe);
  const float* plse = f32(lse, "lse", cfg.batch * cfg.hq * cfg.nq);
  const float* pdo = f32(d_o, "do", qe);
  float* pdq = f32(dq, "dq", qe);
  float* pdk = f32(dk, "dk", ke);
  float* pdv = f32(dv, "dv", ke);
  const AttentionArgs args_(cfg, a.q, a.k, a.v);
  KernelOptions kopt;
  kopt.threads = cfg.threads, kopt.isa = cfg.isa;
  nb::gil_scoped_release unlocked;
  ringattn::attention_backward(args_, po, plse, pdo, pdq, pdk, pdv, kopt);
}

// plan: the `plan --json` records of a command line.
std::vector<std::string> plan(const std::vector<std::string>& args) {
  const cli::ParsedOptions opt = parse(cli::plan_spec(), args);
  const std::unique_ptr<cli::PlanRun> p = cli::run_plan(opt);
  std::vector<std::string> out;
  for (const cli::JsonObject& j : p->records) out.push_back(j.str());
  return out;
}

}  // namespace
}  // namespace ringattn::python

NB_MODULE(_core, m) {
  using namespace ringattn;
  m.doc() = "ringattn's compiled core; use the ringattn package's functions";
  leave_signals_to_host();  // Ctrl-C stays Python's KeyboardInterrupt
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const cli::UsageError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const FieldError& e) {
      const std::string msg =
          cli::option_for_field(e.field()).empty() ? std::string(e.what()) : cli::option_message(e);
      PyErr_SetString(PyExc_ValueError, msg.c_str());
    } catch (const Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
  // noconvert: an array that is not already C-contiguous float data on the CPU
  // is refused, never silently copied (the package says what to do instead).
  m.def("run", &python::run, "args"_a, "q"_a.noconvert(), "k"_a.noconvert(), "v"_a.noconvert(),
        "o"_a.noconvert().none(), "lse"_a.noconvert().none(), "ranks"_a,
        "d_o"_a.noconvert().none() = nb::none(), "dq"_a.noconvert().none() = nb::none(),
        "dk"_a.noconvert().none() = nb::none(), "dv"_a.noconvert().none() = nb::none());
  m.def("attention", &python::attention, "args"_a, "q"_a.noconvert(), "k"_a.noconvert(),
        "v"_a.noconvert(), "o"_a.noconvert(), "lse"_a.noconvert());
  m.def("attention_backward", &python::attention_backward, "args"_a, "q"_a.noconvert(),
        "k"_a.noconvert(), "v"_a.noconvert(), "o"_a.noconvert(), "lse"_a.noconvert(),
        "do"_a.noconvert(), "dq"_a.noconvert(), "dk"_a.noconvert(), "dv"_a.noconvert());
  m.def("plan", &python::plan, "args"_a);
  m.def("layout_segments", &python::layout_segments, "args"_a, "ranks"_a, "rank"_a, "keys"_a);
  m.def("run_mpi", &python::run_mpi, "args"_a, "q"_a.noconvert(), "k"_a.noconvert(),
        "v"_a.noconvert(), "o"_a.noconvert(), "lse"_a.noconvert());
  m.def(
      "data_pointer", [](const python::Array& a) { return reinterpret_cast<uintptr_t>(a.data()); },
      "a"_a.noconvert(), "The address the kernel reads an array at (no copy is made on the way).");
  m.def("best_isa", [] { return isa_name(best_isa()); });
}
