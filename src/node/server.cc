#include "node/server.h"

#include <unistd.h>
#include <array>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <future>
#include <memory>

#include "base/clock.h"
#include "base/log.h"
#include "net/http_server.h"
#include "net/io_runtime.h"
#include "node/amqp_server.h"
#include "node/broker_node.h"
#include "node/consul_api.h"
#include "node/data_dir.h"
#include "node/mq_api.h"
#include "node/node_log.h"
#include "node/registry_node.h"
#include "node/spill_stream.h"
#include "storage/log_store.h"

namespace haven::node {

namespace {

struct HostPort {
  std::string host;
  uint16_t port = 0;
};

Result<HostPort> ParseHostPort(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Status::InvalidArgument("expected HOST:PORT, got \"" + s + "\"");
  }
  std::string port = s.substr(colon + 1);
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p < 0 || p > 65535) {
    return Status::InvalidArgument("invalid port in \"" + s + "\"");
  }
  return HostPort{s.substr(0, colon), static_cast<uint16_t>(p)};
}

std::string HostName() {
  std::array<char, 256> buf{};
  if (gethostname(buf.data(), buf.size() - 1) != 0 || buf[0] == '\0') return "haven";
  return buf.data();
}

}  // namespace

// A leader that stops hands its leadership to the most caught-up voter first (TimeoutNow), so the
// cluster does not wait out an election timeout for a planned restart. Bounded; a cluster of one
// skips it.
void HandOffLeadership(RegistryNode& node, net::IoRuntime& io) {
  constexpr int64_t kHandOffMs = 2000;
  RaftLogStatus st = node.raft_status();
  if (st.node.role != raft::Role::kLeader || st.node.conf.voters_size() < 2) return;
  auto done = std::make_shared<std::promise<Status>>();
  io.Post([&node, done] {
    node.TransferLeadership(0, kHandOffMs, [done](Status s) { done->set_value(std::move(s)); });
  });
  auto f = done->get_future();
  if (f.wait_for(std::chrono::milliseconds(kHandOffMs + 500)) != std::future_status::ready) {
    HLOG_WARN("leadership_handoff", "result=no_answer");
    return;
  }
  Status s = f.get();
  HLOG_INFO("leadership_handoff", "ok={} error=\"{}\"", s.ok(), s.ok() ? "" : s.ToString());
}

Status CheckRaftTiming(int64_t tick_ms, int64_t election_timeout_ms) {
  if (tick_ms < 10 || tick_ms > 1000) {
    return Status::InvalidArgument("--raft-tick must be from 10ms to 1s");
  }
  if (election_timeout_ms > 60'000) {
    return Status::InvalidArgument("--election-timeout must be at most 60s");
  }
  // Fewer ticks leave no room for a late heartbeat; more make the tick pointless.
  int64_t ticks = election_timeout_ms / tick_ms;
  if (ticks < 5 || ticks > 10'000) {
    return Status::InvalidArgument("--election-timeout must be 5 to 10000 times --raft-tick");
  }
  return Status::Ok();
}

Result<std::map<uint64_t, std::string>> ParsePeers(const std::string& text) {
  std::map<uint64_t, std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t comma = text.find(',', start);
    std::string item =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? text.size() : comma + 1;
    size_t eq = item.find('=');
    if (eq == std::string::npos) {
      return Status::InvalidArgument("--peers: expected ID=HOST:PORT, got \"" + item + "\"");
    }
    char* end = nullptr;
    std::string id_text = item.substr(0, eq);
    unsigned long long id = std::strtoull(id_text.c_str(), &end, 10);
    if (id_text.empty() || *end != '\0' || id == 0) {
      return Status::InvalidArgument("--peers: bad id \"" + id_text + "\" (ids are 1, 2, ...)");
    }
    std::string addr = item.substr(eq + 1);
    if (auto hp = ParseHostPort(addr); !hp.ok() || hp->port == 0) {
      return Status::InvalidArgument("--peers: bad address \"" + addr + "\" for " + id_text);
    }
    if (!out.emplace(id, addr).second) {
      return Status::InvalidArgument("--peers: id " + id_text + " given twice");
    }
    if (out.size() > 7) return Status::InvalidArgument("--peers: at most 7 voters");
  }
  return out;
}

namespace {

// The queues on the node's log (Machine::kQueues).
void RegisterBroker(BrokerNode& broker, NodeLog& log) {
  MachineHooks hooks;
  hooks.apply = [&broker](uint64_t index, const std::string& d) { broker.Apply(index, d); };
  hooks.take_snapshot = [&broker] { return broker.TakeSnapshot(); };
  hooks.restore = [&broker](uint64_t index, const std::string& state) {
    if (state.empty()) return;  // a snapshot from before the queues existed
    if (Status s = broker.Restore(state); !s.ok()) {
      HLOG_ERROR("bad_snapshot", "machine=queues index={} error=\"{}\"", index, s.ToString());
    }
  };
  hooks.on_leadership = [&broker](bool leader) { broker.OnLeadership(leader); };
  hooks.snapshot_durable = [&broker](uint64_t index) { broker.OnSnapshotDurable(index); };
  hooks.on_member_gone = [&broker](uint64_t id) { broker.OnMemberGone(id); };
  hooks.snapshot_stream = [&broker] { return broker.SnapshotStream(); };
  hooks.last_commands = [&broker] { return broker.last_commands(); };
  log.Register(Machine::kQueues, std::move(hooks));
}

}  // namespace

int RunServer(const ServerOptions& opts) {
  auto http = ParseHostPort(opts.http);
  if (!http.ok()) {
    HLOG_ERROR("bad_flag", "flag=--http error=\"{}\"", http.status().message());
    return 2;
  }
  std::error_code ec;
  std::filesystem::create_directories(opts.data_dir, ec);
  if (ec) {
    HLOG_ERROR("data_dir_failed", "dir={} error=\"{}\"", opts.data_dir, ec.message());
    return 1;
  }
  // Block the shutdown signals before any thread starts, so every thread inherits the mask and
  // the main thread alone takes them with sigwait: a signal during start-up is not lost.
  sigset_t shutdown_signals;
  sigemptyset(&shutdown_signals);
  sigaddset(&shutdown_signals, SIGINT);
  sigaddset(&shutdown_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &shutdown_signals, nullptr);

  if (Status s = ClaimRaftId(opts.data_dir, opts.raft_node_id); !s.ok()) {
    HLOG_ERROR("bad_flag", "flag=--node-id error=\"{}\"", s.message());
    return 2;
  }
  auto store = storage::OpenRocksLogStore(RaftStoreDir(opts.data_dir));
  if (!store.ok()) {
    HLOG_ERROR("storage_open_failed", "dir={} error=\"{}\"", opts.data_dir,
               store.status().message());
    return 1;
  }

  if (opts.mq_window < 1 || opts.mq_window > kMaxMqWindow) {
    HLOG_ERROR("bad_flag", "flag=--mq-window error=\"must be 1 to {}\"", kMaxMqWindow);
    return 2;
  }
  auto spill = storage::SpillStore::Open(storage::SpillDir(opts.data_dir));
  if (!spill.ok()) {
    HLOG_ERROR("storage_open_failed", "dir={} error=\"{}\"", opts.data_dir,
               spill.status().message());
    return 1;
  }

  auto node_id = LoadOrCreateNodeId(opts.data_dir);
  if (!node_id.ok()) {
    HLOG_ERROR("node_id_failed", "error=\"{}\"", node_id.status().message());
    return 1;
  }

  SystemClock clock;
  net::IoRuntime io(1);  // one executor thread: the registry state needs no locks
  RegistryNodeOptions node_opts;
  node_opts.node_name = opts.node_name.empty() ? HostName() : opts.node_name;
  node_opts.node_id = *node_id;
  node_opts.advertise_address =
      opts.advertise_address.empty() ? http->host : opts.advertise_address;
  node_opts.tombstone_ttl_ms = opts.tombstone_ttl_ms;
  if (Status s = CheckRaftTiming(opts.raft_tick_ms, opts.election_timeout_ms); !s.ok()) {
    HLOG_ERROR("bad_flag", "error=\"{}\"", s.message());
    return 2;
  }
  RaftLogOptions raft_opts;
  raft_opts.node_id = opts.raft_node_id;
  raft_opts.listen = opts.raft;
  raft_opts.tick_ms = opts.raft_tick_ms;
  raft_opts.election_ticks = static_cast<int>(opts.election_timeout_ms / opts.raft_tick_ms);
  if (opts.join) {
    if (!opts.peers.empty()) {
      HLOG_ERROR("bad_flag", "flag=--join error=\"--join and --peers exclude each other\"");
      return 2;
    }
    raft_opts.peers = {};  // no bootstrap voters: the leader's log or snapshot says who
  } else if (opts.peers.empty()) {
    raft_opts.peers = {{opts.raft_node_id, opts.raft}};
  } else {
    auto peers = ParsePeers(opts.peers);
    if (!peers.ok() || !peers->count(opts.raft_node_id)) {
      HLOG_ERROR(
          "bad_flag", "flag=--peers error=\"{}\"",
          peers.ok() ? "--peers must include this node's --node-id" : peers.status().message());
      return 2;
    }
    raft_opts.peers = *peers;
  }
  // The queues' spilled messages arrive in a snapshot's stream straight into this node's spill.
  raft_opts.snapshot_sink = std::make_shared<SpillSnapshotSink>(**spill, clock);
  NodeLog log(**store, io, raft_opts, opts.snapshot_every_entries);
  RegistryNode node(node_opts, io, log, clock);
  BrokerNodeOptions broker_opts;
  broker_opts.raft_id = opts.raft_node_id;
  broker_opts.raft_status = [&log] { return log.raft().status().node; };
  broker_opts.gone_members = [&log] { return log.raft().status().gone; };
  broker_opts.broker.window = opts.mq_window;
  broker_opts.spill = spill->get();
  BrokerNode broker(
      broker_opts, io,
      [&log](std::string data, ReplicatedLog::DoneFn done) {
        log.raft().Propose(Machine::kQueues, std::move(data), std::move(done));
      },
      clock);
  RegisterBroker(broker, log);

  net::HttpServerOptions http_opts;
  http_opts.host = http->host;
  http_opts.port = http->port;
  http_opts.max_connections = opts.max_connections;
  // Longer than the longest blocking query (10 min + jitter), so the idle timer never cuts one.
  http_opts.idle_timeout_ms = int64_t{11} * 60 * 1000;
  std::unique_ptr<ConsulApi> api;  // made once the bound address is known; no request runs before
  MqApi mq_api(broker);
  net::HttpServer server(io, http_opts,
                         [&api, &mq_api](const net::HttpRequest& req, net::Responder respond) {
                           if (MqApi::Owns(req.path)) return mq_api.Handle(req, std::move(respond));
                           api->Handle(req, std::move(respond));
                         });
  if (Status s = server.Start(); !s.ok()) {
    HLOG_ERROR("listen_failed", "http={} error=\"{}\"", opts.http, s.ToString());
    return 1;
  }
  ConsulApiOptions api_opts;
  api = std::make_unique<ConsulApi>(node, api_opts);
  io.Start();
  if (Status s = log.Start(); !s.ok()) {
    HLOG_ERROR("start_failed", "dir={} error=\"{}\"", opts.data_dir, s.ToString());
    server.Stop();
    io.Stop();
    return 1;
  }
  node.Start();
  io.Post([&broker] { broker.DropPreviousBoots(); });
  AmqpServerOptions amqp_opts;
  amqp_opts.listen = opts.amqp;
  AmqpServer amqp(amqp_opts, io, broker);
  if (Status s = amqp.Start(); !s.ok()) {
    HLOG_ERROR("listen_failed", "amqp={} error=\"{}\"", opts.amqp, s.ToString());
    server.Stop();
    node.Stop();
    log.Stop();
    io.Stop();
    return 1;
  }
  HLOG_INFO("listening", "http={} node={} raft_id={} data_dir={}", server.address(),
            node_opts.node_name, opts.raft_node_id, opts.data_dir);

  int sig = 0;
  sigwait(&shutdown_signals, &sig);
  HLOG_INFO("shutting_down", "signal={}", sig);
  HandOffLeadership(node, io);
  amqp.Stop();
  server.Stop();
  node.Stop();
  log.Stop();
  io.Stop();
  HLOG_INFO("stopped", "applied_index={}", node.state().last_applied());
  return 0;
}

}  // namespace haven::node
