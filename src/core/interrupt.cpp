#include "ringattn/interrupt.hpp"

#include <atomic>

namespace ringattn {
namespace {
std::atomic<bool> g_interrupt{false};
}  // namespace

void request_interrupt() {
  g_interrupt.store(true, std::memory_order_relaxed);
}

void clear_interrupt() {
  g_interrupt.store(false, std::memory_order_relaxed);
}

bool interrupt_requested() {
  return g_interrupt.load(std::memory_order_relaxed);
}

void throw_if_interrupted() {
  if (interrupt_requested()) throw Interrupted();
}

}  // namespace ringattn
