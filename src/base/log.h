// Structured logging: one line per event, "event=name key=value ...", on stderr.
#pragma once

#include <string_view>

#include <spdlog/spdlog.h>

namespace haven::log {

// Sets the level from "trace|debug|info|warn|error|off"; returns false on an unknown name.
bool SetLevel(std::string_view level);

// Formats: HLOG_INFO("listening", "addr={} port={}", addr, port) ->
//   "2026-11-26T14:00:00.123Z info event=listening addr=127.0.0.1 port=8500"
#define HLOG_AT(lvl, event, fmt_, ...) \
  spdlog::log(lvl, "event=" event " " fmt_ __VA_OPT__(, ) __VA_ARGS__)
#define HLOG_DEBUG(event, ...) HLOG_AT(spdlog::level::debug, event, __VA_ARGS__)
#define HLOG_INFO(event, ...) HLOG_AT(spdlog::level::info, event, __VA_ARGS__)
#define HLOG_WARN(event, ...) HLOG_AT(spdlog::level::warn, event, __VA_ARGS__)
#define HLOG_ERROR(event, ...) HLOG_AT(spdlog::level::err, event, __VA_ARGS__)

// Installs the stderr sink and the one-line pattern. Call once at start-up.
void Init();

}  // namespace haven::log
