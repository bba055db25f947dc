// AmqpConnection: one AMQP 0-9-1 client connection's protocol state machine (handshake, channels,
// the broker methods) over a TCP socket. It runs on the node's executor thread, the same thread as
// BrokerNode, so it calls the broker directly and needs no locks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/ip/tcp.hpp>

#include "net/io_runtime.h"
#include "node/broker_node.h"

namespace haven::node {

struct AmqpServerOptions {
  std::string listen = "127.0.0.1:5672";  // HOST:PORT (an IP); port 0 picks a free one
  size_t max_connections = 10'000;        // more are accepted and closed at once
  uint32_t frame_max = 131'072;           // offered in connection.tune
  uint16_t channel_max = 2'047;
  uint16_t heartbeat_s = 60;  // offered; the client's tune-ok decides (0: none)
  std::string user = "guest";
  std::string password = "guest";
  int64_t handshake_timeout_ms = 10'000;  // protocol header to open-ok
  int64_t close_timeout_ms = 3'000;       // wait for close-ok after we sent connection.close
  // Backpressure: a connection stops reading while its output not yet written or its proposals
  // not yet applied exceed these, and resumes below half of them.
  size_t max_write_buffer_bytes = size_t{64} << 20;
  size_t max_in_flight = 10'000;
  // Output beyond this (consumers without prefetch that do not read) closes the connection.
  size_t hard_write_buffer_bytes = size_t{256} << 20;
  uint64_t max_body_bytes = uint64_t{128} << 20;  // larger contents: 406 on the channel
  size_t max_consumers_per_channel = 10'000;
  size_t max_unacked_per_channel = 1'000'000;  // delivery tags remembered for acks
};

class AmqpConnection {
 public:
  using ClosedFn = std::function<void(AmqpConnection*)>;

  AmqpConnection(const AmqpServerOptions& opts, net::IoRuntime& executor, BrokerNode& broker,
                 boost::asio::ip::tcp::socket socket, ClosedFn on_closed);
  ~AmqpConnection();

  // On the executor: attaches to the broker, arms the handshake timer and starts reading.
  void Start();
  // On the executor: closes the socket at once (server stop); detaches from the broker.
  void Shutdown();
  const std::string& owner() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;  // outlives this while socket handlers run
};

}  // namespace haven::node
