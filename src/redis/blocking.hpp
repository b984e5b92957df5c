// One command on a short-lived blocking connection (layer: redis). Only for where no event
// loop runs any more: a worker's last flush of unsent counts at exit. Every step is bounded
// by the Config's timeouts.
#pragma once

#include <string_view>
#include <vector>

#include "redis/client.hpp"

namespace throttle::redis {

// Connects (AUTH, SELECT as configured), runs EVAL script.source() keys args, disconnects.
// *sent (when not null) tells a failure before the EVAL was written (false: Redis cannot have
// run it) from one after (true: it may have).
Result eval_blocking(const Config& config, const Script& script,
                     const std::vector<std::string_view>& keys,
                     const std::vector<std::string_view>& args, bool* sent = nullptr) noexcept;

}  // namespace throttle::redis
