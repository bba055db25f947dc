#include "demo/report.h"

#include <map>
#include <set>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "demo/layout.h"
#include "demo/sqlite_db.h"

namespace haven::demo {

namespace json = boost::json;

std::string Report::ToText() const {
  std::string t;
  t += fmt::format("haven demo: {} services x {} instances, {} registry node(s), {:.1f} s\n",
                   services, instances, cluster, duration_s);
  t += fmt::format("  requests          {} ({:.0f}/s): {} ok, {} client-visible failures\n",
                   requests, duration_s > 0 ? requests / duration_s : 0.0, successes, failures);
  t += fmt::format("                    {} writes, {} reads\n", writes, reads);
  t += fmt::format("  latency           p50 {:.2f} ms, p99 {:.2f} ms, p99.9 {:.2f} ms\n", p50_ms,
                   p99_ms, p999_ms);
  t += fmt::format("  proxy             {} failovers, {} retries\n", failovers, retries);
  t += fmt::format(
      "  chaos             {} kills ({} instances, {} workers, {} leaders), {} restarts\n", kills,
      instance_kills, worker_kills, leader_kills, restarts);
  if (kill_to_leave_samples > 0) {
    t += fmt::format("  kill -> left      avg {:.0f} ms, max {:.0f} ms ({} kills measured)\n",
                     kill_to_leave_avg_ms, kill_to_leave_max_ms, kill_to_leave_samples);
  }
  t += fmt::format("  data check        {} acknowledged writes, {} lost\n", acked_writes,
                   lost_writes);
  t += fmt::format("  events            {} published (confirmed), {} consumed, {} lost\n",
                   events_published, events_consumed, events_lost);
  t += fmt::format("  peak memory       {:.0f} MiB (all processes of the demo)\n", peak_rss_mb);
  for (const std::string& f : failure_samples) t += "  failure: " + f + "\n";
  for (const std::string& n : notes) t += "  note: " + n + "\n";
  t += Passed() ? "  result            PASS: no client-visible failure, nothing lost\n"
                : "  result            FAIL\n";
  return t;
}

std::string Report::ToJson() const {
  json::object o{{"services", services},
                 {"instances", instances},
                 {"cluster", cluster},
                 {"duration_s", duration_s},
                 {"requests", requests},
                 {"successes", successes},
                 {"failures", failures},
                 {"reads", reads},
                 {"writes", writes},
                 {"p50_ms", p50_ms},
                 {"p99_ms", p99_ms},
                 {"p999_ms", p999_ms},
                 {"acked_writes", acked_writes},
                 {"lost_writes", lost_writes},
                 {"events_published", events_published},
                 {"events_consumed", events_consumed},
                 {"events_lost", events_lost},
                 {"kills", kills},
                 {"instance_kills", instance_kills},
                 {"worker_kills", worker_kills},
                 {"leader_kills", leader_kills},
                 {"restarts", restarts},
                 {"failovers", failovers},
                 {"retries", retries},
                 {"kill_to_leave_avg_ms", kill_to_leave_avg_ms},
                 {"kill_to_leave_max_ms", kill_to_leave_max_ms},
                 {"kill_to_leave_samples", kill_to_leave_samples},
                 {"peak_rss_mb", peak_rss_mb},
                 {"passed", Passed()}};
  json::array samples, note_list;
  for (const auto& f : failure_samples) samples.emplace_back(f);
  for (const auto& n : notes) note_list.emplace_back(n);
  o["failure_samples"] = std::move(samples);
  o["notes"] = std::move(note_list);
  return json::serialize(o) + "\n";
}

Result<DataCheck> CheckData(const std::string& work_dir, int services,
                            const std::vector<AckedWrite>& acked) {
  std::vector<std::map<std::string, std::string>> records(services);
  std::vector<std::set<std::string>> published(services);  // by publishing service
  std::vector<std::set<std::string>> received(services);   // by consuming service
  for (int s = 0; s < services; ++s) {
    SqliteDb db;
    if (Status st = db.Open(DbPath(work_dir, s), false); !st.ok()) return st;
    std::vector<RecordRow> rows;
    if (Status st = db.ReadRecords(&rows, &published[s]); !st.ok()) return st;
    if (Status st = db.ReadEventIds(&received[s]); !st.ok()) return st;
    for (RecordRow& r : rows) records[s][r.key] = std::move(r.value);
  }
  DataCheck c;
  for (const AckedWrite& w : acked) {
    auto it = records[w.service].find(w.key);
    if (it == records[w.service].end() || it->second != w.value) c.lost_writes++;
    // An acknowledged write's event was confirmed before the answer, whatever its flag says.
    published[w.service].insert(ServiceName(w.service) + "/" + w.key);
  }
  for (int s = 0; s < services; ++s) {
    const std::set<std::string>& got = received[EventTarget(s, services)];
    c.events_published += published[s].size();
    for (const std::string& id : published[s]) {
      if (!got.count(id)) c.events_lost++;
    }
    c.events_consumed += received[s].size();
  }
  return c;
}

}  // namespace haven::demo
