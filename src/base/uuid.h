// Random (version 4) UUIDs, for session and node IDs.
#pragma once

#include <string>

namespace haven {

// "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" from a per-thread generator seeded by random_device.
std::string NewUuid();

}  // namespace haven
