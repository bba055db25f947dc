#include "net/io_runtime.h"

#include <algorithm>
#include <atomic>
#include <optional>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "base/log.h"

namespace haven::net {
namespace asio = boost::asio;

namespace {

// The timer lives on its own strand because Cancel() may come from any thread.
class AsioTimer final : public Timer, public std::enable_shared_from_this<AsioTimer> {
 public:
  explicit AsioTimer(asio::io_context& ctx) : timer_(asio::make_strand(ctx)) {}

  void Arm(int64_t ms, std::function<void()> fn) {
    // Clamped so that now() + ms cannot overflow the clock.
    constexpr int64_t kMaxMs = int64_t{366} * 24 * 3600 * 1000;
    timer_.expires_after(std::chrono::milliseconds(std::clamp<int64_t>(ms, 0, kMaxMs)));
    timer_.async_wait(
        [self = shared_from_this(), fn = std::move(fn)](boost::system::error_code ec) {
          if (ec || self->cancelled_.load()) return;
          fn();
        });
  }

  void Cancel() override {
    if (cancelled_.exchange(true)) return;
    // Wakes the pending wait now so its callback (and what it captured) is released early.
    asio::post(timer_.get_executor(), [self = shared_from_this()] { self->timer_.cancel(); });
  }

 private:
  asio::steady_timer timer_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace

struct IoRuntime::Impl {
  asio::io_context ctx;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;
};

IoRuntime::IoRuntime(int threads)
    : impl_(std::make_unique<Impl>()),
      threads_(threads < 1 ? 1 : (threads > 256 ? 256 : threads)) {}

IoRuntime::~IoRuntime() { Stop(); }

void IoRuntime::Start() {
  if (!workers_.empty()) return;
  impl_->ctx.restart();
  impl_->guard.emplace(impl_->ctx.get_executor());
  for (int i = 0; i < threads_; ++i) {
    workers_.emplace_back([this] { RunLoop(); });
  }
}

void IoRuntime::RunLoop() {
  // A handler that throws must not end the thread: log it and keep serving.
  for (;;) {
    try {
      impl_->ctx.run();
      return;
    } catch (const std::exception& e) {
      HLOG_ERROR("io_handler_exception", "what=\"{}\"", e.what());
    } catch (...) {
      HLOG_ERROR("io_handler_exception", "what=unknown");
    }
  }
}

void IoRuntime::Stop() {
  impl_->guard.reset();
  impl_->ctx.stop();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
}

void IoRuntime::Post(std::function<void()> fn) { asio::post(impl_->ctx, std::move(fn)); }

std::shared_ptr<Timer> IoRuntime::RunAfter(int64_t ms, std::function<void()> fn) {
  auto timer = std::make_shared<AsioTimer>(impl_->ctx);
  timer->Arm(ms, std::move(fn));
  return timer;
}

asio::io_context& IoRuntime::context() { return impl_->ctx; }

int IoRuntime::WaitForSignal(std::initializer_list<int> signals) {
  asio::io_context ctx;
  asio::signal_set set(ctx);
  for (int s : signals) set.add(s);
  int got = 0;
  set.async_wait([&got](boost::system::error_code ec, int sig) {
    if (!ec) got = sig;
  });
  ctx.run();
  return got;
}

}  // namespace haven::net
