// Where the demo's pieces live: service and instance names, which worker hosts which instance,
// which queue carries whose events, and the files under the work folder. One place for all of it.
#pragma once

#include <string>
#include <vector>

namespace haven::demo {

inline constexpr int kMaxServices = 999;  // names are svc-NNN
inline constexpr int kMaxInstances = 9;   // instance ids end in -N

// One instance of one service.
struct InstanceRef {
  int service = 0;  // 0-based
  int index = 0;    // 0-based within its service
};

std::string ServiceName(int service);            // "svc-007"
std::string InstanceId(const InstanceRef& ref);  // "svc-007-2"
// Instance `index` of service s lives in worker (s + index) % workers: with workers >= instances a
// worker holds at most one instance of each service, so killing a worker leaves every service up.
int WorkerOf(const InstanceRef& ref, int workers);
std::vector<InstanceRef> InstancesOfWorker(int worker, int services, int instances, int workers);
// Service s publishes its events to the queue of service (s + 1) % services, which consumes it.
int EventTarget(int service, int services);
std::string EventQueue(int consumer_service);                          // "demo.events.svc-008"
std::string DbPath(const std::string& work_dir, int service);          // WORK/db/svc-007.db
std::string WorkerReadyPath(const std::string& work_dir, int worker);  // WORK/worker-1.ready

}  // namespace haven::demo
