#include "base/log.h"

#include <spdlog/sinks/stdout_sinks.h>

namespace haven::log {

void Init() {
  auto logger = spdlog::stderr_logger_mt("haven");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

bool SetLevel(std::string_view level) {
  auto l = spdlog::level::from_str(std::string(level));
  if (l == spdlog::level::off && level != "off") return false;
  spdlog::set_level(l);
  return true;
}

}  // namespace haven::log
