// The memo of inflated bodies (see inflate_memo.hpp).
#include "core/inflate_memo.hpp"

#include <cstring>
#include <new>

#include "core/gzip.hpp"

namespace throttle::core::cache {

InflateMemo::InflateMemo(const SipKey& key, size_t max_bytes)
    : key_(key), max_bytes_(max_bytes), slots_(slots) {}

void InflateMemo::unlink(uint32_t i) noexcept {
    Slot& s = slots_[i];
    if (s.newer != none) {
        slots_[s.newer].older = s.older;
    } else {
        head_ = s.older;
    }
    if (s.older != none) {
        slots_[s.older].newer = s.newer;
    } else {
        tail_ = s.newer;
    }
    s.newer = none;
    s.older = none;
}

void InflateMemo::push_head(uint32_t i) noexcept {
    Slot& s = slots_[i];
    s.newer = none;
    s.older = head_;
    if (head_ != none) {
        slots_[head_].newer = i;
    } else {
        tail_ = i;
    }
    head_ = i;
}

void InflateMemo::drop(uint32_t i) noexcept {
    Slot& s = slots_[i];
    unlink(i);
    bytes_ -= s.body->size() + s.gz.size();
    count_--;
    s.body.reset();
    s.gz.clear();
    s.gz.shrink_to_fit();
    s.used_at = 0;
}

uint64_t InflateMemo::tag_of(std::string_view gz) const noexcept {
    // The member's trailer (CRC-32 and length mod 2^32) and its size: 16 bytes, two blocks.
    uint64_t in[2] = {0, gz.size()};
    size_t n = gz.size() < 8 ? gz.size() : 8;
    if (n > 0) {
        std::memcpy(in, gz.data() + gz.size() - n, n);
    }
    return siphash13(key_, in, sizeof in);
}

std::shared_ptr<const std::string> InflateMemo::plain(std::string_view gz, size_t plain_size) {
    const uint64_t t = tag_of(gz);
    const uint32_t first = static_cast<uint32_t>((t % (slots / ways)) * ways);
    uint32_t victim = first;
    for (uint32_t i = first; i < first + ways; i++) {
        Slot& s = slots_[i];
        if (s.body && s.tag == t && s.body->size() == plain_size && s.gz.size() == gz.size() &&
            std::memcmp(s.gz.data(), gz.data(), gz.size()) == 0) {
            hits_++;
            s.used_at = ++tick_;
            if (head_ != i) {
                unlink(i);
                push_head(i);
            }
            return s.body;
        }
        if (!slots_[victim].body) {
            continue;  // an empty way is the victim already
        }
        if (!s.body || s.used_at < slots_[victim].used_at) {
            victim = i;
        }
    }
    auto out = std::make_shared<std::string>();
    if (!gzip_decompress(gz, *out, plain_size) || out->size() != plain_size) {
        return nullptr;
    }
    const size_t cost = plain_size + gz.size();
    if (cost > max_bytes_) {
        return out;
    }
    Slot& v = slots_[victim];
    if (v.body) {
        drop(victim);
        evictions_++;
    }
    while (bytes_ + cost > max_bytes_ && tail_ != none) {
        drop(tail_);
        evictions_++;
    }
    try {
        v.gz.assign(gz.data(), gz.size());
    } catch (const std::bad_alloc&) {
        return out;  // the slot stays empty
    }
    v.tag = t;
    v.body = std::move(out);
    v.used_at = ++tick_;
    bytes_ += cost;
    count_++;
    push_head(victim);
    return v.body;
}

}  // namespace throttle::core::cache
