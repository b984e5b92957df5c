// Strict decisions (layer: ngx): requests whose strict zones Redis decides, queued per
// event-loop turn and sent as one script call (Redis runs one script for many requests).
#pragma once

#include <memory>
#include <vector>

#include "ngx/conf.hpp"
#include "ngx/request.hpp"
#include "redis/loop.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {

// A request waiting for Redis to decide its strict zones (made by bind_to_request()).
class StrictRequest : public RequestBound {
   public:
    using RequestBound::RequestBound;
    virtual const std::vector<redis::StrictZone>& zones() const noexcept = 0;
    // Redis' decisions, one per zone (zones().size()), or nullptr when Redis could not answer.
    // Called once, from the loop, and only while the request lives and the worker runs.
    virtual void decided(const redis::StrictDecision* decisions) noexcept = 0;
};

// Queues a decision for the end of this turn. False when it could not be queued (decided()
// will not be called).
bool strict_submit(std::shared_ptr<StrictRequest> request) noexcept;

void strict_worker_init(const MainConf& mcf, redis::Loop& loop);  // may throw
void strict_worker_exit() noexcept;  // what is queued is dropped (the worker exits)

}  // namespace throttle::ngx
