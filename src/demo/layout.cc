#include "demo/layout.h"

#include <fmt/format.h>

namespace haven::demo {

std::string ServiceName(int service) { return fmt::format("svc-{:03d}", service); }

std::string InstanceId(const InstanceRef& ref) {
  return fmt::format("{}-{}", ServiceName(ref.service), ref.index);
}

int WorkerOf(const InstanceRef& ref, int workers) { return (ref.service + ref.index) % workers; }

std::vector<InstanceRef> InstancesOfWorker(int worker, int services, int instances, int workers) {
  std::vector<InstanceRef> out;
  for (int s = 0; s < services; ++s) {
    for (int i = 0; i < instances; ++i) {
      if (WorkerOf({s, i}, workers) == worker) out.push_back({s, i});
    }
  }
  return out;
}

int EventTarget(int service, int services) { return (service + 1) % services; }

std::string EventQueue(int consumer_service) {
  return "demo.events." + ServiceName(consumer_service);
}

std::string DbPath(const std::string& work_dir, int service) {
  return fmt::format("{}/db/{}.db", work_dir, ServiceName(service));
}

std::string WorkerReadyPath(const std::string& work_dir, int worker) {
  return fmt::format("{}/worker-{}.ready", work_dir, worker);
}

}  // namespace haven::demo
