// parse_rate: the "Nr/s|m|h|d" grammar, its limits and its refusals.
#include "core/rate.hpp"

#include <gtest/gtest.h>

#include <string_view>

namespace throttle::core {
namespace {

struct Good {
    std::string_view text;
    uint64_t limit;
    int64_t period_ms;
};

TEST(ParseRate, AcceptsEveryUnit) {
    const Good cases[] = {
        {"1r/s", 1, ms_per_second},
        {"7r/s", 7, ms_per_second},
        {"60r/m", 60, ms_per_minute},
        {"100r/h", 100, ms_per_hour},
        {"1r/d", 1, ms_per_day},
        {"1000000r/s", 1000000, ms_per_second},
        {"1000000000r/d", max_rate_limit, ms_per_day},
        {"010r/m", 10, ms_per_minute},
        {"0000000000000000000000001r/h", 1, ms_per_hour},
    };
    for (const Good& c : cases) {
        Rate r;
        ASSERT_TRUE(parse_rate(c.text, r)) << c.text;
        EXPECT_EQ(r.limit, c.limit) << c.text;
        EXPECT_EQ(r.period_ms, c.period_ms) << c.text;
    }
}

TEST(ParseRate, UnitsAreTheRightLength) {
    EXPECT_EQ(ms_per_second, 1000);
    EXPECT_EQ(ms_per_minute, 60000);
    EXPECT_EQ(ms_per_hour, 3600000);
    EXPECT_EQ(ms_per_day, 86400000);
}

TEST(ParseRate, RejectsMalformedAndOutOfRange) {
    const std::string_view bad[] = {
        "",
        "r/s",
        "0r/s",
        "000r/s",
        "-1r/s",
        "+1r/s",
        " 1r/s",
        "1r/s ",
        "1 r/s",
        "1r /s",
        "1r/ s",
        "1r/x",
        "1r/S",
        "1R/s",
        "1r/",
        "1r",
        "1",
        "1/s",
        "1rs",
        "1r/ss",
        "1r/sec",
        "1.5r/s",
        "1e3r/s",
        "0x10r/s",
        "1000000001r/s",
        "9999999999r/s",
        "18446744073709551617r/s",
        "99999999999999999999999999999999999999r/d",
        std::string_view("1r/s\0", 5),
        std::string_view("1\0r/s", 5),
        "\xd9\xa1r/s",  // ARABIC-INDIC DIGIT ONE
        "1r\\s",
        "r/s1",
    };
    for (std::string_view text : bad) {
        Rate r{42, 7};
        EXPECT_FALSE(parse_rate(text, r)) << '"' << text << '"';
        EXPECT_EQ(r.limit, 42u) << "output touched on failure";
        EXPECT_EQ(r.period_ms, 7);
    }
}

TEST(ParseRate, MaxIsInclusive) {
    Rate r;
    EXPECT_TRUE(parse_rate("1000000000r/s", r));
    EXPECT_EQ(r.limit, max_rate_limit);
    EXPECT_FALSE(parse_rate("1000000001r/s", r));
    EXPECT_FALSE(parse_rate("10000000000r/s", r));
}

}  // namespace
}  // namespace throttle::core
