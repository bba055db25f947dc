// haven-sim: runs seeds of the deterministic cluster simulation; a failure prints its seed, the
// reason and the command that replays it with a trace.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "world.h"

namespace {

struct Args {
  uint64_t from = 1;
  uint64_t seeds = 1;
  bool single = false;
  bool trace = false;
  int nodes = 0;  // 0: as OptionsForSeed says
  int64_t steps = 0;
  bool unsafe = false;
  bool figure8 = false;
  bool strict = false;
  bool detect = false;  // dead-leader detection, with wrong reports too
  haven::sim::WorkloadKind workload = haven::sim::WorkloadKind::kRegistry;
  haven::sim::QueueBug bug = haven::sim::QueueBug::kNone;
};

void Usage() {
  std::cerr << "usage: haven-sim [--seeds N --from S | --seed S [--trace]] [--nodes 3|5]\n"
               "                 [--steps TICKS] [--unsafe-commit-old-terms] [--figure8]\n"
               "                 [--strict-core] [--workload registry|queues]\n"
               "                 [--queue-bug ack-keeps|requeue-drops|batch-reversed] "
               "[--detect-leader-death]\n";
}

bool ParseNumber(const char* s, int64_t lo, int64_t hi, int64_t* out) {
  char* end = nullptr;
  long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

bool Parse(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    auto number = [&](int64_t lo, int64_t hi, int64_t* out) {
      if (i + 1 >= argc || !ParseNumber(argv[++i], lo, hi, out)) {
        std::cerr << "haven-sim: " << f << " needs a number in [" << lo << "," << hi << "]\n";
        return false;
      }
      return true;
    };
    int64_t v = 0;
    if (f == "--seeds") {
      if (!number(1, 100'000'000, &v)) return false;
      a->seeds = static_cast<uint64_t>(v);
    } else if (f == "--from" || f == "--seed") {
      if (!number(0, INT64_MAX, &v)) return false;
      a->from = static_cast<uint64_t>(v);
      if (f == "--seed") a->single = true, a->seeds = 1;
    } else if (f == "--nodes") {
      if (!number(3, 5, &v) || (v != 3 && v != 5)) {
        std::cerr << "haven-sim: --nodes is 3 or 5\n";
        return false;
      }
      a->nodes = static_cast<int>(v);
    } else if (f == "--steps") {
      if (!number(10, 10'000'000, &v)) return false;
      a->steps = v;
    } else if (f == "--trace") {
      a->trace = true;
    } else if (f == "--unsafe-commit-old-terms") {
      a->unsafe = true;
    } else if (f == "--figure8") {
      a->figure8 = true;
    } else if (f == "--strict-core") {
      a->strict = true;
    } else if (f == "--detect-leader-death") {
      a->detect = true;
    } else if (f == "--workload" && i + 1 < argc) {
      std::string w = argv[++i];
      if (w != "registry" && w != "queues") {
        std::cerr << "haven-sim: --workload is registry or queues\n";
        return false;
      }
      a->workload =
          w == "queues" ? haven::sim::WorkloadKind::kQueues : haven::sim::WorkloadKind::kRegistry;
    } else if (f == "--queue-bug" && i + 1 < argc) {
      std::string b = argv[++i];
      if (b == "ack-keeps") {
        a->bug = haven::sim::QueueBug::kAckKeepsMessage;
      } else if (b == "requeue-drops") {
        a->bug = haven::sim::QueueBug::kRequeueDrops;
      } else if (b == "batch-reversed") {
        a->bug = haven::sim::QueueBug::kBatchReversed;
      } else {
        std::cerr << "haven-sim: --queue-bug is ack-keeps, requeue-drops or batch-reversed\n";
        return false;
      }
    } else {
      std::cerr << "haven-sim: unknown flag " << f << "\n";
      return false;
    }
  }
  return true;
}

haven::sim::SimOptions OptionsFor(const Args& a, uint64_t seed) {
  haven::sim::SimOptions o = haven::sim::OptionsForSeed(seed);
  if (a.nodes) o.nodes = a.nodes;
  if (a.steps) o.duration_us = a.steps * o.tick_us;
  o.unsafe_commit_old_terms = a.unsafe;
  o.trace = a.trace;
  o.core_workarounds = !a.strict;
  if (a.figure8) o.faults = haven::sim::Figure8Faults();
  if (a.detect) {
    o.faults.detect_leader_death = true;
    o.faults.p_false_unreachable = 0.1;
  }
  o.workload = a.workload;
  o.queue_bug = a.bug;
  return o;
}

std::string ReplayCommand(const Args& a, const haven::sim::SimOptions& o) {
  std::string cmd = "build/haven-sim --seed " + std::to_string(o.seed) + " --trace --nodes " +
                    std::to_string(o.nodes);
  if (a.steps) cmd += " --steps " + std::to_string(a.steps);
  if (a.unsafe) cmd += " --unsafe-commit-old-terms";
  if (a.figure8) cmd += " --figure8";
  if (a.strict) cmd += " --strict-core";
  if (a.detect) cmd += " --detect-leader-death";
  if (a.workload == haven::sim::WorkloadKind::kQueues) cmd += " --workload queues";
  if (a.bug == haven::sim::QueueBug::kAckKeepsMessage) cmd += " --queue-bug ack-keeps";
  if (a.bug == haven::sim::QueueBug::kRequeueDrops) cmd += " --queue-bug requeue-drops";
  if (a.bug == haven::sim::QueueBug::kBatchReversed) cmd += " --queue-bug batch-reversed";
  return cmd;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!Parse(argc, argv, &a)) {
    Usage();
    return 2;
  }
  auto start = std::chrono::steady_clock::now();
  haven::sim::SimStats total;
  uint64_t undecided = 0;  // seeds whose history was too big or hard to check
  for (uint64_t i = 0; i < a.seeds; ++i) {
    auto o = OptionsFor(a, a.from + i);
    auto r = haven::sim::RunSeed(o, a.trace ? &std::cout : nullptr);
    total.events += r.stats.events;
    total.messages += r.stats.messages;
    total.crashes += r.stats.crashes;
    total.elections += r.stats.elections;
    total.committed += r.stats.committed;
    total.ops_ok += r.stats.ops_ok;
    total.ops_unknown += r.stats.ops_unknown;
    total.snapshots_installed += r.stats.snapshots_installed;
    total.conf_changes += r.stats.conf_changes;
    total.confirmed += r.stats.confirmed;
    total.deliveries += r.stats.deliveries;
    total.redeliveries += r.stats.redeliveries;
    total.acks += r.stats.acks;
    total.batches += r.stats.batches;
    total.batched_commands += r.stats.batched_commands;
    if (!r.ok) {
      std::cout << "FAIL seed=" << o.seed << " nodes=" << o.nodes << ": " << r.reason << "\n"
                << "replay: " << ReplayCommand(a, o) << std::endl;
      return 1;
    }
    if (a.single) {
      std::cout << "ok seed=" << o.seed << " nodes=" << o.nodes << " events=" << r.stats.events
                << " committed=" << r.stats.committed << " elections=" << r.stats.elections
                << " crashes=" << r.stats.crashes << " ops=" << r.stats.ops_ok << "+"
                << r.stats.ops_unknown << "?" << (r.stats.lin_undecided ? " lin=undecided" : "");
      if (a.workload == haven::sim::WorkloadKind::kQueues) {
        std::cout << " confirmed=" << r.stats.confirmed << " deliveries=" << r.stats.deliveries
                  << " redeliveries=" << r.stats.redeliveries << " acks=" << r.stats.acks
                  << " batches=" << r.stats.batches << "/" << r.stats.batched_commands;
      }
      std::cout << "\n";
    }
    undecided += r.stats.lin_undecided ? 1 : 0;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!a.single) {
    std::cout << "ok: seeds " << a.from << ".." << a.from + a.seeds - 1 << " passed in " << secs
              << " s (" << static_cast<double>(a.seeds) / secs
              << " seeds/s); events=" << total.events << " messages=" << total.messages
              << " crashes=" << total.crashes << " elections=" << total.elections
              << " committed=" << total.committed
              << " snapshots_installed=" << total.snapshots_installed
              << " conf_changes=" << total.conf_changes << " ops=" << total.ops_ok << "+"
              << total.ops_unknown << "?";
    if (a.workload == haven::sim::WorkloadKind::kQueues) {
      std::cout << " confirmed=" << total.confirmed << " deliveries=" << total.deliveries
                << " redeliveries=" << total.redeliveries << " acks=" << total.acks
                << " batches=" << total.batches << " batched_commands=" << total.batched_commands
                << "\n";
    } else {
      std::cout << " linearizability_undecided=" << undecided << "\n";
    }
  }
  return 0;
}
