// haven: one binary, subcommands. `haven server` runs a node; the others are clients of its API.
#include <cstdlib>
#include <iostream>

#include <CLI/CLI.hpp>

#include "base/duration.h"
#include "base/log.h"
#include "cli/client_commands.h"
#include "cli/cluster_commands.h"
#include "cli/proxy_command.h"
#include "demo/demo_command.h"
#include "node/server.h"

namespace {

int Main(int argc, char** argv) {
  haven::log::Init();
  CLI::App app{"haven: a service registry, failover proxy and message queue in one binary"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags (--addr, --log-level) may also follow the subcommand
  app.set_version_flag("--version", "haven 0.1.0");

  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")
      ->capture_default_str();

  haven::node::ServerOptions server_opts;
  std::string tombstone_ttl = "15m";
  auto* server = app.add_subcommand(
      "server", "Run a haven node (durable; a Raft cluster of one, or of --peers)");
  server->add_option("--data-dir", server_opts.data_dir, "Data directory")->capture_default_str();
  server->add_option("--http", server_opts.http, "HTTP API address HOST:PORT (port 0: ephemeral)")
      ->capture_default_str();
  server->add_option("--node-name", server_opts.node_name, "Node name (default: the host name)");
  server->add_option("--advertise", server_opts.advertise_address,
                     "Address other nodes and clients see (default: the HTTP host)");
  server
      ->add_option("--tombstone-ttl", tombstone_ttl,
                   "How long deleted KV keys are remembered for blocking queries (1 to 2x this)")
      ->capture_default_str();
  server
      ->add_option(
          "--snapshot-every", server_opts.snapshot_every_entries,
          "Commands applied between two snapshots (log entries; each command of a queue batch "
          "counts)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{100}, uint64_t{100'000'000}));
  server->add_option("--node-id", server_opts.raft_node_id, "Raft member id (1, 2, ...)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 62));
  server->add_option("--raft", server_opts.raft, "Raft address HOST:PORT of this node")
      ->capture_default_str();
  server->add_option("--peers", server_opts.peers,
                     "Initial voters ID=HOST:PORT,... including this node (default: a cluster of "
                     "one)");
  server
      ->add_option("--amqp", server_opts.amqp,
                   "AMQP 0-9-1 listener HOST:PORT (port 0: any free port, logged at start)")
      ->capture_default_str();
  server->add_flag("--join", server_opts.join,
                   "Join an existing cluster (instead of --peers): wait to be added with `haven "
                   "cluster add`");
  server
      ->add_option("--max-connections", server_opts.max_connections,
                   "Open HTTP connections at most")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1'000'000}));

  std::string raft_tick = "50ms";
  std::string election_timeout = "1500ms";
  server
      ->add_option("--raft-tick", raft_tick,
                   "Raft tick (10ms-1s): the leader heartbeats every tick; a follower that hears "
                   "nothing for 2 ticks checks whether the leader's process is still there")
      ->capture_default_str();
  server
      ->add_option("--election-timeout", election_timeout,
                   "A follower that hears no leader campaigns after 1-2x this (5-10000 ticks, at "
                   "most 60s); within 3 ticks when the leader's raft port refuses connections")
      ->capture_default_str();
  server
      ->add_option("--mq-window", server_opts.mq_window,
                   "Ready messages each queue keeps in memory; the rest wait on disk")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, haven::node::kMaxMqWindow));

  haven::cli::ClientOptions client_opts;
  const char* env_addr = std::getenv("HAVEN_HTTP_ADDR");
  if (env_addr && *env_addr) client_opts.addr = env_addr;
  haven::cli::AddClientCommands(app, client_opts);
  haven::cli::AddClusterCommands(app, client_opts);
  haven::cli::ProxyCommandOptions proxy_opts;
  haven::cli::AddProxyCommand(app, proxy_opts);
  haven::demo::DemoCommandOptions demo_opts;
  haven::demo::AddDemoCommands(app, demo_opts);

  CLI11_PARSE(app, argc, argv);
  if (!haven::log::SetLevel(log_level)) {
    std::cerr << "haven: unknown --log-level \"" << log_level << "\"\n";
    return 2;
  }
  if (server->parsed()) {
    auto ttl = haven::ParseDurationMs(tombstone_ttl);
    if (!ttl.ok() || *ttl < 100 || *ttl > int64_t{7} * 24 * 3600 * 1000) {
      std::cerr << "haven server: --tombstone-ttl must be a duration from 100ms to 168h\n";
      return 2;
    }
    server_opts.tombstone_ttl_ms = *ttl;
    auto tick = haven::ParseDurationMs(raft_tick);
    auto election = haven::ParseDurationMs(election_timeout);
    if (!tick.ok() || !election.ok()) {
      std::cerr << "haven server: --raft-tick and --election-timeout take durations (50ms, 1s)\n";
      return 2;
    }
    if (auto s = haven::node::CheckRaftTiming(*tick, *election); !s.ok()) {
      std::cerr << "haven server: " << s.message() << "\n";
      return 2;
    }
    server_opts.raft_tick_ms = *tick;
    server_opts.election_timeout_ms = *election;
    return haven::node::RunServer(server_opts);
  }
  if (haven::cli::ProxyCommandParsed(proxy_opts)) return haven::cli::RunProxyCommand(proxy_opts);
  if (int code = haven::demo::RunDemoCommands(demo_opts); code >= 0) return code;
  return haven::cli::RunClientCommand(app, client_opts);
}

}  // namespace

int main(int argc, char** argv) {
  // Nothing should throw past the layers (they return Status); this is the last guard so that a
  // surprise ends with a message and exit code 1, not an abort.
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "haven: fatal: " << e.what() << "\n";
    return 1;
  }
}
