#include "proxy/proxy_metrics.h"

#include "lb/outlier_detector.h"

namespace haven::proxy {

ClusterMetrics::ClusterMetrics(const std::string& cluster) : name(cluster) {
  auto& r = metrics::Registry::Default();
  const metrics::Labels l{{"service", cluster}};
  for (int c = 1; c <= 5; ++c) {
    by_class[c] = &r.GetCounter("haven_proxy_requests_total", "Client requests by status class",
                                {{"service", cluster}, {"code", std::to_string(c) + "xx"}});
  }
  retries = &r.GetCounter("haven_proxy_retries_total", "Upstream attempts after the first", l);
  failovers = &r.GetCounter("haven_proxy_failovers_total",
                            "Attempts moved to another instance at once (active failover)", l);
  panics = &r.GetCounter("haven_proxy_panic_picks_total",
                         "First tries sent to an ejected or unhealthy instance: none was left", l);
  for (auto reason : {lb::EjectionReason::kConnect, lb::EjectionReason::kTimeout,
                      lb::EjectionReason::kFailures}) {
    ejections[static_cast<size_t>(reason)] = &r.GetCounter(
        "haven_proxy_ejections_total", "Outlier ejections by reason",
        {{"service", cluster}, {"reason", std::string(lb::EjectionReasonName(reason))}});
  }
  try_timeouts = &r.GetCounter("haven_proxy_try_timeouts_total",
                               "Upstream attempts that passed their per-try timeout", l);
  probe_pass = &r.GetCounter("haven_proxy_probes_total", "Probes of ejected instances by result",
                             {{"service", cluster}, {"result", "pass"}});
  probe_fail = &r.GetCounter("haven_proxy_probes_total", "Probes of ejected instances by result",
                             {{"service", cluster}, {"result", "fail"}});
  connect_errors = &r.GetCounter("haven_proxy_upstream_connect_errors_total",
                                 "Upstream connects that failed", l);
  truncated = &r.GetCounter("haven_proxy_truncated_responses_total",
                            "Responses cut short: the upstream failed mid-body", l);
  tcp_connections =
      &r.GetCounter("haven_proxy_tcp_connections_total", "TCP mode client connections", l);
  latency = &r.GetHistogram("haven_proxy_request_duration_seconds",
                            "Client request latency through the proxy", l);
  health_pass = &r.GetCounter("haven_proxy_health_checks_total",
                              "Active health checks of upstreams by result",
                              {{"service", cluster}, {"result", "pass"}});
  health_fail = &r.GetCounter("haven_proxy_health_checks_total",
                              "Active health checks of upstreams by result",
                              {{"service", cluster}, {"result", "fail"}});
}

void ClusterMetrics::CountResponse(unsigned status) {
  unsigned c = status / 100;
  if (c >= 1 && c <= 5) by_class[c]->Inc();
}

metrics::Histogram* ClusterMetrics::InstanceLatency(const std::string& instance_id) const {
  return &metrics::Registry::Default().GetHistogram(
      "haven_proxy_upstream_duration_seconds",
      "Upstream attempt latency (to the response head) per instance",
      {{"service", name}, {"instance", instance_id}});
}

}  // namespace haven::proxy
