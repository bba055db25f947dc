// Helpers the node layer's unit tests share: a free loopback address and waiting on a condition
// with a deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace haven::node::testutil {

// "127.0.0.1:PORT" with a port that was free a moment ago.
inline std::string FreeAddress() {
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor a(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return "127.0.0.1:" + std::to_string(a.local_endpoint().port());
}

// Polls `f` every 5 ms until it is true or `ms` passed; returns its last value.
template <typename F>
bool WaitUntil(F f, int64_t ms = 10'000) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return f();
}

}  // namespace haven::node::testutil
