// bench_mq_backlog: builds and drains a queue backlog, for bench/mq/backlog.sh. `publish` sends
// N numbered messages with confirms (no consumer), printing the server's RSS (from /proc/PID) every
// --report-every confirmed messages; `consume` takes N messages with acks and fails unless they
// arrive numbered FROM, FROM+1, ... with no gap or extra, and no repeat unless flagged redelivered
// (the client reconnected). One line per report, key=value.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include "base/proc_status.h"
#include "client/amqp_client.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kMaxMessages = 100'000'000;
constexpr size_t kSeqDigits = 12;  // the body starts with the message number, zero-padded

// Resident set size of `pid` in KiB (0 when unknown).
uint64_t RssKiB(int pid) {
  return static_cast<uint64_t>(std::max<int64_t>(0, haven::ProcStatusKiB(pid, "VmRSS")));
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string Body(uint64_t seq, size_t size) {
  std::string body = fmt::format("{:0{}}", seq, kSeqDigits);
  body.resize(std::max(size, kSeqDigits), 'x');
  return body;
}

int Publish(const std::string& address, const std::string& queue, uint64_t from, uint64_t count,
            size_t size, uint64_t report_every, int pid) {
  haven::client::ProducerOptions po;
  po.addresses = {address};
  po.queue = queue;
  po.confirm_window = 2048;
  haven::client::Producer producer(po);
  if (auto s = producer.Connect(); !s.ok()) return fmt::print(stderr, "{}\n", s.ToString()), 1;
  const auto start = Clock::now();
  for (uint64_t i = 0; i < count; ++i) {
    if (auto s = producer.PublishAsync(Body(from + i, size)); !s.ok()) {
      return fmt::print(stderr, "publish {}: {}\n", from + i, s.ToString()), 1;
    }
    if ((i + 1) % report_every == 0 || i + 1 == count) {
      if (auto s = producer.WaitConfirms(60'000); !s.ok()) {
        return fmt::print(stderr, "confirms: {}\n", s.ToString()), 1;
      }
      fmt::print("event=published confirmed={} seconds={:.1f} rate={:.0f} rss_kib={}\n", i + 1,
                 Seconds(start), static_cast<double>(i + 1) / Seconds(start), RssKiB(pid));
      std::fflush(stdout);
    }
  }
  return 0;
}

int Consume(const std::string& address, const std::string& queue, uint64_t from, uint64_t count,
            uint64_t report_every, int pid) {
  haven::client::ConsumerOptions co;
  co.addresses = {address};
  co.queue = queue;
  co.prefetch = 1000;
  haven::client::Consumer consumer(co);
  if (auto s = consumer.Connect(); !s.ok()) return fmt::print(stderr, "{}\n", s.ToString()), 1;
  const auto start = Clock::now();
  uint64_t repeats = 0;
  for (uint64_t i = 0; i < count; ++i) {
    auto m = consumer.Next(30'000);
    if (!m.ok()) return fmt::print(stderr, "message {}: {}\n", from + i, m.status().ToString()), 1;
    const std::string want = fmt::format("{:0{}}", from + i, kSeqDigits);
    const std::string got = m->body.substr(0, kSeqDigits);
    if (got < want && m->redelivered) {
      // Its ack was lost with a connection (the client reconnected): a flagged repeat is fine.
      ++repeats;
      --i;
    } else if (got != want) {
      return fmt::print(stderr, "out of order: want {} got {} redelivered={} reconnects={}\n", want,
                        got, m->redelivered, consumer.reconnects()),
             1;
    }
    if (auto s = consumer.Ack(*m); !s.ok()) return fmt::print(stderr, "{}\n", s.ToString()), 1;
    if ((i + 1) % report_every == 0 || i + 1 == count) {
      fmt::print(
          "event=consumed in_order={} seconds={:.1f} rate={:.0f} rss_kib={} redelivered_repeats={} "
          "reconnects={}\n",
          i + 1, Seconds(start), static_cast<double>(i + 1) / Seconds(start), RssKiB(pid), repeats,
          consumer.reconnects());
      std::fflush(stdout);
    }
  }
  auto extra = consumer.Next(500);
  if (extra.ok()) return fmt::print(stderr, "a message more than expected\n"), 1;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_mq_backlog: build a queue backlog, then drain it in order"};
  std::string mode, address = "127.0.0.1:5672", queue = "backlog";
  uint64_t from = 0, count = 1'000'000, report_every = 1'000'000;
  size_t size = 100;
  int pid = 0;
  app.add_option("mode", mode, "publish | consume")
      ->required()
      ->check(CLI::IsMember({"publish", "consume"}));
  app.add_option("--amqp", address, "server AMQP address HOST:PORT");
  app.add_option("--queue", queue, "queue name");
  app.add_option("--from", from, "number of the first message");
  app.add_option("--count", count, "messages")->check(CLI::Range(uint64_t{1}, kMaxMessages));
  app.add_option("--size", size, "body bytes")->check(CLI::Range(size_t{12}, size_t{1} << 20));
  app.add_option("--report-every", report_every, "messages between reports")
      ->check(CLI::Range(uint64_t{1}, kMaxMessages));
  app.add_option("--pid", pid, "server pid whose RSS to report");
  CLI11_PARSE(app, argc, argv);
  if (mode == "publish") return Publish(address, queue, from, count, size, report_every, pid);
  return Consume(address, queue, from, count, report_every, pid);
}
