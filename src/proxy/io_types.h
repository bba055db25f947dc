// The asio types of the proxy's workers, bound to the concrete io_context executor: every socket,
// timer and coroutine of a worker runs on its one io_context, so the type-erased any_io_executor
// (a copy and a virtual call per operation, visible in profiles) buys nothing here.
#pragma once

#include <chrono>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace haven::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using Executor = asio::io_context::executor_type;
using SteadyTime = std::chrono::steady_clock::time_point;

template <typename T>
using Task = asio::awaitable<T, Executor>;
using Socket = asio::basic_stream_socket<tcp, Executor>;
using Acceptor = asio::basic_socket_acceptor<tcp, Executor>;
using Timer = asio::basic_waitable_timer<std::chrono::steady_clock,
                                         asio::wait_traits<std::chrono::steady_clock>, Executor>;

// co_await op(..., kAwait) yields (error_code, result...) instead of throwing.
inline constexpr auto kAwait = asio::as_tuple(asio::use_awaitable_t<Executor>{});

inline SteadyTime SteadyNow() { return std::chrono::steady_clock::now(); }
inline SteadyTime SteadyAfterMs(int64_t ms) { return SteadyNow() + std::chrono::milliseconds(ms); }

}  // namespace haven::proxy
