// `haven cluster status|add|remove|transfer-leader`: Raft membership administration over the HTTP
// operator endpoints of a running server (--addr).
#pragma once

#include <CLI/CLI.hpp>

#include "cli/client_commands.h"

namespace haven::cli {

// Adds the `cluster` subcommand and its children to `app`; the command that runs sets
// opts.exit_code (0 ok, 1 failure, 2 bad usage).
void AddClusterCommands(CLI::App& app, ClientOptions& opts);

}  // namespace haven::cli
