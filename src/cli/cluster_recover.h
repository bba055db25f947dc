// `haven cluster recover`: the offline repair of a cluster that lost a majority of its voters for
// good, run on a stopped survivor's data dir (see docs/cluster.md).
#pragma once

#include <CLI/CLI.hpp>

#include "cli/client_commands.h"

namespace haven::cli {

// Adds `recover` under the `cluster` subcommand; when it runs it sets opts.exit_code (0 done, 1
// failed, 2 bad usage). It needs no --addr: it works on the store, not on a running server.
void AddClusterRecoverCommand(CLI::App& cluster_app, ClientOptions& opts);

}  // namespace haven::cli
