// IoRuntime: one Asio io_context run by N threads; the event loop every net class shares.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace haven::net {

// A one-shot timer from IoRuntime::RunAfter. Cancel() before it fires means the callback never
// runs.
class Timer {
 public:
  virtual ~Timer() = default;
  virtual void Cancel() = 0;
};

class IoRuntime {
 public:
  explicit IoRuntime(int threads);
  ~IoRuntime();  // Stop()s
  IoRuntime(const IoRuntime&) = delete;
  IoRuntime& operator=(const IoRuntime&) = delete;

  // Starts the threads. Idempotent.
  void Start();
  // Stops the loop and joins the threads; pending handlers are dropped. Safe to call twice and from
  // outside the runtime's threads only.
  void Stop();

  void Post(std::function<void()> fn);
  // Runs fn on a runtime thread after ms milliseconds unless the timer is cancelled first.
  std::shared_ptr<Timer> RunAfter(int64_t ms, std::function<void()> fn);

  boost::asio::io_context& context();
  int threads() const { return threads_; }

  // Blocks the calling thread until one of the signals arrives; returns its number.
  static int WaitForSignal(std::initializer_list<int> signals);

 private:
  void RunLoop();

  struct Impl;
  std::unique_ptr<Impl> impl_;
  int threads_;
  std::vector<std::thread> workers_;
};

}  // namespace haven::net
