// Exact timing of reconnects, backoff and the circuit breaker, on a virtual clock: every
// connection attempt fails at once (a unix socket path that does not exist), so no server is
// needed and the schedule can be checked to the millisecond.
#include <gtest/gtest.h>

#include "support.hpp"

namespace throttle::redis::test {
namespace {

Config unreachable() {
    Config c;
    c.address.unix_path = "/nonexistent/throttle-redis-test.sock";
    c.connect_timeout_ms = 100;
    c.command_timeout_ms = 20;
    return c;
}

// Advances the clock timer by timer until `until`, recording when connection attempts happen.
std::vector<uint64_t> attempts(FakeLoop& loop, Client& client, uint64_t until) {
    std::vector<uint64_t> at;
    uint64_t seen = client.stats().connects;
    for (uint64_t t = loop.next_expiry(); t <= until; t = loop.next_expiry()) {
        loop.advance_to(t);
        if (client.stats().connects != seen) {
            seen = client.stats().connects;
            at.push_back(t);
        }
    }
    return at;
}

TEST(RedisFakeLoop, ExponentialBackoffSchedule) {
    FakeLoop loop;
    Config cfg = unreachable();
    cfg.failure_threshold = 0;  // no breaker: backoff alone
    Client client(loop, cfg);
    client.start();  // attempt at t=0, fails at once
    EXPECT_EQ(client.stats().connects, 1u);
    EXPECT_FALSE(client.available());
    std::vector<uint64_t> expected = {50, 150, 350, 750, 1550, 3150, 6350, 11350, 16350, 21350};
    EXPECT_EQ(attempts(loop, client, 21350), expected);
    EXPECT_EQ(loop.watches, 0);
    EXPECT_EQ(client.stats().circuit_opens, 0u);
}

TEST(RedisFakeLoop, CircuitBreakerSchedule) {
    FakeLoop loop;
    std::vector<std::pair<LogLevel, std::string>> logs;
    Client client(loop, unreachable(),
                  [&](LogLevel l, std::string_view m) { logs.emplace_back(l, std::string(m)); });
    client.start();  // failure 1 at t=0; 2 at 50; 3 at 150 opens it for 1 s; probes double it
    std::vector<uint64_t> expected = {50, 150, 1150, 3150, 7150, 15150, 31150, 61150, 91150};
    EXPECT_EQ(attempts(loop, client, 91150), expected);
    EXPECT_TRUE(client.circuit_open());
    EXPECT_EQ(client.stats().failures, 10u);
    EXPECT_EQ(client.stats().circuit_opens, 8u);  // the opening and seven failed probes

    // Logged once per incident: the first failure and the opening are errors, the rest less.
    int errors = 0;
    for (const auto& l : logs) {
        errors += l.first == LogLevel::Error;
    }
    EXPECT_EQ(errors, 2);
}

TEST(RedisFakeLoop, FailFastIsNeverSynchronous) {
    FakeLoop loop;
    Client client(loop, unreachable());
    Outcome during_backoff, during_open, invalid;
    issue(client, {"GET", "x"}, during_backoff);  // connects (fails at once), then fails it
    EXPECT_EQ(client.stats().connects, 1u);
    EXPECT_EQ(during_backoff.calls, 0);
    loop.advance_to(loop.now_ms());  // the 0 ms timer
    EXPECT_EQ(during_backoff.calls, 1);
    EXPECT_EQ(during_backoff.result.failure, Failure::Disconnected);

    loop.advance_to(150);  // failures 2 and 3: open
    ASSERT_TRUE(client.circuit_open());
    uint64_t connects = client.stats().connects;
    issue(client, {"GET", "x"}, during_open);
    issue(client, {}, invalid);
    EXPECT_EQ(during_open.calls + invalid.calls, 0);
    loop.advance_to(151);
    EXPECT_EQ(during_open.calls, 1);
    EXPECT_EQ(during_open.result.failure, Failure::CircuitOpen);
    EXPECT_EQ(invalid.result.failure, Failure::Invalid);
    EXPECT_EQ(client.stats().connects, connects);  // no network while open
    EXPECT_FALSE(during_open.synchronous || invalid.synchronous || during_backoff.synchronous);
}

TEST(RedisFakeLoop, InvalidAddressIsRefused) {
    FakeLoop loop;
    Config cfg;
    cfg.address.host = "redis.example";  // names are resolved by the owner, not here
    EXPECT_THROW(Client(loop, cfg), std::invalid_argument);
    cfg.address.host = "127.0.0.1";
    cfg.address.port = 0;
    EXPECT_THROW(Client(loop, cfg), std::invalid_argument);
}

}  // namespace
}  // namespace throttle::redis::test
