// Client subcommands (services, health, kv, mq): thin wrappers over the HTTP API of a running
// server.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace haven::cli {

struct ClientOptions {
  std::string addr = "http://127.0.0.1:8500";  // --addr, else $HAVEN_HTTP_ADDR, else this
  int exit_code = 0;                           // set by the command that ran
};

// Adds `services list|register|deregister`, `health SERVICE`, `kv get|put|delete` and
// `mq list|declare|delete|publish|consume` to `app`.
void AddClientCommands(CLI::App& app, ClientOptions& opts);
// The exit code of the client command that ran during parsing.
int RunClientCommand(const CLI::App& app, const ClientOptions& opts);

}  // namespace haven::cli
