// The `haven demo` and hidden `haven demo-worker` subcommands: their flags and how they run.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "demo/demo.h"
#include "demo/worker.h"

namespace haven::demo {

// What AddDemoCommands registers; the strings are durations as typed ("30s", "1m").
struct DemoCommandOptions {
  DemoOptions demo;
  std::string duration = "30s";
  std::string drain_timeout = "30s";
  std::string ttl = "10s";
  std::string check_interval = "1s";
  WorkerOptions worker;
  CLI::App* demo_command = nullptr;
  CLI::App* worker_command = nullptr;
};

void AddDemoCommands(CLI::App& app, DemoCommandOptions& opts);
// Runs `demo` or `demo-worker` when one of them was given; -1 when neither was.
int RunDemoCommands(DemoCommandOptions& opts);

}  // namespace haven::demo
