#include "net/framed_transport.h"

#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <thread>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include "base/log.h"

namespace haven::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using namespace asio::experimental::awaitable_operators;  // NOLINT(google-build-using-namespace)

namespace {

constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);
constexpr size_t kMaxBatchBytes = 1 << 20;  // frames coalesced into one write

void PutLength(std::string& out, uint32_t n) {
  std::array<char, 4> b = {static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                           static_cast<char>(n >> 8), static_cast<char>(n)};
  out.append(b.data(), b.size());
}

uint32_t GetLength(const std::array<unsigned char, 4>& b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

Result<tcp::endpoint> ParseEndpoint(const std::string& text) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos) return Status::InvalidArgument("expected HOST:PORT: " + text);
  unsigned port = 0;
  const char* begin = text.data() + colon + 1;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(begin, end, port);
  if (ec != std::errc() || p != end || port > 65535) {
    return Status::InvalidArgument("bad port in " + text);
  }
  error_code aec;
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  auto addr = asio::ip::make_address(host, aec);
  if (aec) return Status::InvalidArgument("not an IP address: " + host);
  return tcp::endpoint(addr, static_cast<uint16_t>(port));
}

}  // namespace

struct FramedTransport::Impl {
  struct Peer {
    std::string address;
    std::deque<std::string> queue;
    size_t queued_bytes = 0;
    bool writing = false;
    std::chrono::steady_clock::time_point down_until{};
    std::unique_ptr<tcp::socket> socket;
  };

  FramedTransportOptions opts;
  OnFrame on_frame;
  asio::io_context ioc{1};
  std::optional<tcp::acceptor> acceptor;
  std::map<std::string, Peer> peers;  // touched on the transport thread only
  size_t inbound = 0;
  std::atomic<uint64_t> sent{0}, received{0}, dropped{0}, connect_failures{0};
  std::thread thread;
  std::string address;

  void Drop(Peer& p) {
    dropped += p.queue.size();
    p.queue.clear();
    p.queued_bytes = 0;
  }

  void Enqueue(const std::string& peer, std::string frame) {
    Peer& p = peers[peer];
    p.address = peer;
    if (std::chrono::steady_clock::now() < p.down_until ||
        p.queued_bytes + frame.size() > opts.max_queued_bytes_per_peer) {
      ++dropped;
      return;
    }
    p.queued_bytes += frame.size();
    p.queue.push_back(std::move(frame));
    if (!p.writing) {
      p.writing = true;
      asio::co_spawn(ioc, WriteLoop(p), asio::detached);
    }
  }

  asio::awaitable<error_code> Connect(Peer& p) {
    auto ep = ParseEndpoint(p.address);
    if (!ep.ok()) co_return asio::error::invalid_argument;
    p.socket = std::make_unique<tcp::socket>(ioc);
    asio::steady_timer timer(ioc, std::chrono::milliseconds(opts.connect_timeout_ms));
    auto result = co_await (p.socket->async_connect(*ep, kAwait) || timer.async_wait(kAwait));
    if (result.index() == 1) co_return asio::error::timed_out;
    auto [ec] = std::get<0>(result);
    if (!ec) p.socket->set_option(tcp::no_delay(true), ec);
    co_return ec;
  }

  // Sends the peer's queue, coalescing frames into writes of up to kMaxBatchBytes. A connect or
  // write failure drops what is queued (the protocol above retransmits).
  asio::awaitable<void> WriteLoop(Peer& p) {
    std::string batch;
    while (!p.queue.empty()) {
      if (!p.socket || !p.socket->is_open()) {
        error_code ec = co_await Connect(p);
        if (ec) {
          ++connect_failures;
          HLOG_DEBUG("transport_connect_failed", "peer={} error=\"{}\"", p.address, ec.message());
          p.socket.reset();
          p.down_until = std::chrono::steady_clock::now() +
                         std::chrono::milliseconds(opts.reconnect_backoff_ms);
          Drop(p);
          break;
        }
      }
      batch.clear();
      size_t frames = 0;
      while (!p.queue.empty() &&
             (batch.empty() || batch.size() + p.queue.front().size() + 4 <= kMaxBatchBytes)) {
        std::string& f = p.queue.front();
        PutLength(batch, static_cast<uint32_t>(f.size()));
        batch += f;
        p.queued_bytes -= f.size();
        p.queue.pop_front();
        ++frames;
      }
      auto [ec, n] = co_await asio::async_write(*p.socket, asio::buffer(batch), kAwait);
      if (ec) {
        dropped += frames;
        error_code ignored;
        p.socket->close(ignored);
        continue;  // reconnects for what is still queued
      }
      sent += frames;
    }
    p.writing = false;
  }

  asio::awaitable<void> AcceptLoop() {
    while (acceptor && acceptor->is_open()) {
      auto [ec, socket] = co_await acceptor->async_accept(kAwait);
      if (ec) {
        if (ec == asio::error::operation_aborted) co_return;
        continue;
      }
      if (inbound >= opts.max_inbound_connections) continue;  // closes as it goes out of scope
      asio::co_spawn(ioc, ReadLoop(std::move(socket)), asio::detached);
    }
  }

  asio::awaitable<void> ReadLoop(tcp::socket socket) {
    ++inbound;
    std::array<unsigned char, 4> len{};
    for (;;) {
      auto [ec, n] = co_await asio::async_read(socket, asio::buffer(len), kAwait);
      if (ec) break;
      uint32_t size = GetLength(len);
      if (size > opts.max_frame_bytes) {
        HLOG_WARN("transport_frame_too_large", "bytes={} limit={}", size, opts.max_frame_bytes);
        break;
      }
      std::string frame(size, '\0');
      auto [bec, bn] = co_await asio::async_read(socket, asio::buffer(frame), kAwait);
      if (bec) break;
      ++received;
      on_frame(std::move(frame));
    }
    --inbound;
  }
};

FramedTransport::FramedTransport(FramedTransportOptions opts, OnFrame on_frame)
    : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->on_frame = std::move(on_frame);
}

FramedTransport::~FramedTransport() { Stop(); }

Status FramedTransport::Start() {
  auto ep = ParseEndpoint(impl_->opts.listen);
  if (!ep.ok()) return ep.status();
  error_code ec;
  impl_->acceptor.emplace(impl_->ioc);
  impl_->acceptor->open(ep->protocol(), ec);
  if (!ec) impl_->acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor->bind(*ep, ec);
  if (!ec) impl_->acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::IoError("listen on " + impl_->opts.listen + ": " + ec.message());
  auto bound = impl_->acceptor->local_endpoint();
  impl_->address = bound.address().to_string() + ":" + std::to_string(bound.port());
  asio::co_spawn(impl_->ioc, impl_->AcceptLoop(), asio::detached);
  impl_->thread = std::thread([impl = impl_.get()] { impl->ioc.run(); });
  return Status::Ok();
}

std::string FramedTransport::address() const { return impl_->address; }

void FramedTransport::Stop() {
  if (!impl_->thread.joinable()) return;
  impl_->ioc.stop();
  impl_->thread.join();
  impl_->peers.clear();
  impl_->acceptor.reset();
}

void FramedTransport::Send(const std::string& peer, std::string frame) {
  if (frame.size() > impl_->opts.max_frame_bytes) {
    ++impl_->dropped;
    return;
  }
  // A raw pointer: handlers run only while the thread runs, i.e. before Stop() returns.
  asio::post(impl_->ioc, [impl = impl_.get(), peer, frame = std::move(frame)]() mutable {
    impl->Enqueue(peer, std::move(frame));
  });
}

FramedTransport::Stats FramedTransport::stats() const {
  return {impl_->sent.load(), impl_->received.load(), impl_->dropped.load(),
          impl_->connect_failures.load()};
}

}  // namespace haven::net
