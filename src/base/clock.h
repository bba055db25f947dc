// Clock: the only way the shell tells time to the pure core, so tests can drive time by hand.
#pragma once

#include <cstdint>

namespace haven {

// Milliseconds on a monotonic clock; never goes back. Used for timeouts and TTLs.
using MonoMs = int64_t;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual MonoMs NowMono() const = 0;
  // Milliseconds since the Unix epoch, for timestamps that travel in commands.
  virtual int64_t NowUnixMs() const = 0;
};

// The real clock (steady_clock and system_clock).
class SystemClock final : public Clock {
 public:
  MonoMs NowMono() const override;
  int64_t NowUnixMs() const override;
};

// A clock that moves only when told: for unit tests and simulation.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(MonoMs start = 1'000'000) : mono_(start) {}
  MonoMs NowMono() const override { return mono_; }
  int64_t NowUnixMs() const override { return 1'700'000'000'000 + mono_; }
  void Advance(MonoMs ms) { mono_ += ms; }

 private:
  MonoMs mono_;
};

}  // namespace haven
