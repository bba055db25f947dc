#include "node/amqp_server.h"

#include <future>
#include <optional>
#include <unordered_map>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "base/log.h"

namespace haven::node {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

Result<tcp::endpoint> ParseListen(const std::string& listen) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return Status::InvalidArgument("listen: want HOST:PORT");
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) return Status::InvalidArgument("listen: bad address '" + host + "'");
  int port = -1;
  try {
    size_t used = 0;
    port = std::stoi(listen.substr(colon + 1), &used);
    if (used != listen.size() - colon - 1) port = -1;
  } catch (...) {
    port = -1;
  }
  if (port < 0 || port > 65535) return Status::InvalidArgument("listen: bad port in " + listen);
  return tcp::endpoint(addr, static_cast<uint16_t>(port));
}

}  // namespace

// Everything but Start/Stop's handoff runs on the executor thread.
struct AmqpServer::Core : std::enable_shared_from_this<Core> {
  Core(AmqpServerOptions o, net::IoRuntime& ex, BrokerNode& b)
      : opts(std::move(o)), executor(ex), broker(b), acceptor(ex.context()) {}

  void DoAccept() {
    acceptor.async_accept([self = shared_from_this()](error_code ec, tcp::socket socket) {
      if (self->stopped) return;
      if (!ec) self->OnAccept(std::move(socket));
      if (ec == asio::error::operation_aborted) return;
      self->DoAccept();
    });
  }

  void OnAccept(tcp::socket socket) {
    if (connections.size() >= opts.max_connections) {
      HLOG_WARN("amqp_connection_refused", "reason=max_connections limit={}", opts.max_connections);
      error_code ec;
      socket.close(ec);
      return;
    }
    std::weak_ptr<Core> weak = shared_from_this();
    auto conn = std::make_shared<AmqpConnection>(opts, executor, broker, std::move(socket),
                                                 [weak](AmqpConnection* c) {
                                                   if (auto self = weak.lock())
                                                     self->connections.erase(c);
                                                 });
    connections.emplace(conn.get(), conn);
    conn->Start();
  }

  void StopOnExecutor() {
    stopped = true;
    error_code ec;
    acceptor.close(ec);
    auto all = std::move(connections);
    connections.clear();
    for (auto& [ptr, conn] : all) conn->Shutdown();
  }

  const AmqpServerOptions opts;
  net::IoRuntime& executor;
  BrokerNode& broker;
  tcp::acceptor acceptor;
  tcp::endpoint bound;
  bool started = false;
  bool stopped = false;
  std::unordered_map<AmqpConnection*, std::shared_ptr<AmqpConnection>> connections;
};

AmqpServer::AmqpServer(AmqpServerOptions opts, net::IoRuntime& executor, BrokerNode& broker)
    : core_(std::make_shared<Core>(std::move(opts), executor, broker)) {}

AmqpServer::~AmqpServer() { Stop(); }

Status AmqpServer::Start() {
  if (core_->started) return Status::Conflict("AMQP server already started");
  auto ep = ParseListen(core_->opts.listen);
  if (!ep.ok()) return ep.status();
  // Bound before the loop touches the acceptor: posted to the executor below.
  error_code ec;
  auto& a = core_->acceptor;
  a.open(ep->protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(*ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    a.close(ec);
    return Status::IoError("AMQP listen on " + core_->opts.listen + ": " + ec.message());
  }
  core_->bound = a.local_endpoint(ec);
  core_->started = true;
  HLOG_INFO("amqp_listening", "address={}", address());
  core_->executor.Post([core = core_] { core->DoAccept(); });
  return Status::Ok();
}

void AmqpServer::Stop() {
  if (!core_->started || stop_requested_) return;
  stop_requested_ = true;
  auto done = std::make_shared<std::promise<void>>();
  core_->executor.Post([core = core_, done] {
    core->StopOnExecutor();
    done->set_value();
  });
  // An executor already stopped drops the handler: do not wait for ever.
  if (done->get_future().wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    HLOG_WARN("amqp_stop_timeout", "executor did not run the stop");
  }
}

std::string AmqpServer::address() const {
  auto addr = core_->bound.address();
  std::string host = addr.to_string();
  if (addr.is_v6()) host = "[" + host + "]";
  return host + ":" + std::to_string(core_->bound.port());
}

}  // namespace haven::node
