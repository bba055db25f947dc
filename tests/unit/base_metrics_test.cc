// The Prometheus registry: counters, callback gauges, and families whose series come and go.
#include "base/metrics.h"

#include <gtest/gtest.h>

namespace haven::metrics {
namespace {

TEST(MetricsTest, RendersCountersAndCallbackGauges) {
  Registry r;
  r.GetCounter("t_requests_total", "Requests", {{"code", "200"}}).Inc();
  r.SetCallbackGauge("t_size", "Size", {}, [] { return 7.0; });
  std::string out = r.RenderPrometheus();
  EXPECT_NE(out.find("# TYPE t_requests_total counter\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_requests_total{code=\"200\"} 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_size 7\n"), std::string::npos) << out;
}

TEST(MetricsTest, CallbackFamilyRendersTheSeriesOfTheMoment) {
  Registry r;
  Registry::Samples now = {{{{"queue", "a"}}, 3}, {{{"queue", "b\"q"}}, 0}};
  r.SetCallbackFamily("t_queue_ready", "Ready messages", "gauge", [&] { return now; });
  std::string out = r.RenderPrometheus();
  EXPECT_NE(out.find("# TYPE t_queue_ready gauge\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_queue_ready{queue=\"a\"} 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_queue_ready{queue=\"b\\\"q\"} 0\n"), std::string::npos) << out;
  now = {{{{"queue", "c"}}, 1}};  // a deleted queue's series disappears
  out = r.RenderPrometheus();
  EXPECT_EQ(out.find("queue=\"a\""), std::string::npos) << out;
  EXPECT_NE(out.find("t_queue_ready{queue=\"c\"} 1\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace haven::metrics
