#include "demo/demo_command.h"

#include <iostream>

#include "base/duration.h"
#include "demo/layout.h"

namespace haven::demo {

void AddDemoCommands(CLI::App& app, DemoCommandOptions& opts) {
  DemoOptions& d = opts.demo;
  auto* c = app.add_subcommand(
      "demo",
      "Run the 100-service scenario on this machine: registry, proxy, services with their own "
      "SQLite databases and queues, load, chaos; then check nothing was lost (docs/demo.md)");
  c->add_option("--services", d.services, "Services, 1..999")->capture_default_str();
  c->add_option("--instances", d.instances, "Instances per service, 1..9")->capture_default_str();
  c->add_option("--workers", d.workers, "Worker processes hosting the instances, 1..64")
      ->capture_default_str();
  c->add_option("--cluster", d.cluster, "Registry/broker nodes: 1 or 3")->capture_default_str();
  c->add_option("--duration", opts.duration, "Load duration, 1s..24h")->capture_default_str();
  c->add_option("--concurrency", d.concurrency, "Keep-alive load connections, 1..1024")
      ->capture_default_str();
  c->add_option("--write-fraction", d.write_fraction, "Share of writes in the load, 0..1")
      ->capture_default_str();
  c->add_flag("--chaos,!--no-chaos", d.chaos,
              "Kill and restart instances and workers during the run (default: on)");
  c->add_flag("--chaos-leader", d.chaos_leader,
              "With --cluster 3: SIGKILL the registry leader every 10 s and restart it");
  c->add_option("--kill-rate", d.kill_rate, "Chaos kills per second, (0, 100]")
      ->capture_default_str();
  c->add_option("--seed", d.seed, "Random seed for load and chaos (0: from the clock)")
      ->capture_default_str();
  c->add_option(
      "--work-dir", d.work_dir,
      "Folder for databases, logs and pids; empty or absent (default: a new /tmp folder)");
  c->add_flag("--keep", d.keep, "Keep the work folder afterwards");
  c->add_option("--json", d.json, "Also write the report as JSON to this file");
  c->add_option("--drain-timeout", opts.drain_timeout,
                "After the load: how long to wait for every confirmed event to be recorded")
      ->capture_default_str();
  c->add_option("--ttl", opts.ttl, "Instances' TTL check, 1s..10m (heartbeat every third)")
      ->capture_default_str();
  c->add_option("--check-interval", opts.check_interval,
                "Instances' HTTP check interval (and timeout), 100ms..1m")
      ->capture_default_str();
  opts.demo_command = c;

  WorkerOptions& w = opts.worker;
  // Hidden (empty group): the orchestrator starts it, nobody types it.
  auto* wc = app.add_subcommand("demo-worker", "One worker process of `haven demo`");
  wc->group("");
  wc->add_option("--work-dir", w.work_dir)->required();
  wc->add_option("--worker", w.worker)->required()->check(CLI::Range(0, 63));
  wc->add_option("--workers", w.workers)->required()->check(CLI::Range(1, 64));
  wc->add_option("--services", w.services)->required()->check(CLI::Range(1, kMaxServices));
  wc->add_option("--instances", w.instances)->required()->check(CLI::Range(1, kMaxInstances));
  wc->add_option("--amqp", w.amqp)->required();
  wc->add_option("--registry", w.registries)->required();
  wc->add_option("--ttl-ms", w.ttl_ms)->check(CLI::Range(int64_t{1000}, int64_t{600000}));
  wc->add_option("--check-interval-ms", w.check_interval_ms)
      ->check(CLI::Range(int64_t{100}, int64_t{60000}));
  opts.worker_command = wc;
}

namespace {

// A duration flag into milliseconds; false (with a message) when it does not parse.
bool ReadDuration(const std::string& flag, const std::string& text, int64_t* ms) {
  auto v = ParseDurationMs(text);
  if (!v.ok()) {
    std::cerr << "haven demo: " << flag << ": " << v.status().message() << "\n";
    return false;
  }
  *ms = *v;
  return true;
}

}  // namespace

int RunDemoCommands(DemoCommandOptions& opts) {
  if (opts.worker_command && opts.worker_command->parsed()) {
    if (opts.worker.worker >= opts.worker.workers) {
      std::cerr << "haven demo-worker: --worker must be below --workers\n";
      return 2;
    }
    return RunWorker(opts.worker);
  }
  if (!opts.demo_command || !opts.demo_command->parsed()) return -1;
  int64_t duration_ms = 0, drain_ms = 0;
  if (!ReadDuration("--duration", opts.duration, &duration_ms) ||
      !ReadDuration("--drain-timeout", opts.drain_timeout, &drain_ms) ||
      !ReadDuration("--ttl", opts.ttl, &opts.demo.ttl_ms) ||
      !ReadDuration("--check-interval", opts.check_interval, &opts.demo.check_interval_ms)) {
    return 2;
  }
  opts.demo.duration_s = duration_ms / 1000;
  opts.demo.drain_timeout_s = drain_ms / 1000;
  return RunDemo(opts.demo);
}

}  // namespace haven::demo
