// The memo of inflated bodies (see inflate_memo.hpp).
#include "core/inflate_memo.hpp"

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
    bytes_ -= s.body->size();
    count_--;
    s.body.reset();
    s.used_at = 0;
}

std::shared_ptr<const std::string> InflateMemo::plain(std::string_view gz, size_t plain_size) {
    const Sip128 t = siphash24_128(key_, gz.data(), gz.size());
    const uint32_t first = static_cast<uint32_t>((t.lo % (slots / ways)) * ways);
    uint32_t victim = first;
    for (uint32_t i = first; i < first + ways; i++) {
        Slot& s = slots_[i];
        if (s.body && s.tag == t && s.body->size() == plain_size) {
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
    if (plain_size > max_bytes_) {
        return out;
    }
    Slot& v = slots_[victim];
    if (v.body) {
        drop(victim);
        evictions_++;
    }
    while (bytes_ + plain_size > max_bytes_ && tail_ != none) {
        drop(tail_);
        evictions_++;
    }
    v.tag = t;
    v.body = out;
    v.used_at = ++tick_;
    bytes_ += plain_size;
    count_++;
    push_head(victim);
    return out;
}

}  // namespace throttle::core::cache
