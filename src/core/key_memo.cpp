// The per-worker memo of keys: see key_memo.hpp.
#include "core/key_memo.hpp"

#include <cstring>

namespace throttle::core {
namespace {

constexpr char memo_seed_label[] = "throttle-key-memo-seed";

}  // namespace

void KeyMemo::reset(const ZoneKeyer& keyer, const SlotTable& table) noexcept {
    for (Slot& s : slots_) {
        s.len = 0;
    }
    // The seed: the keyed digest of a label, under the zone's keyer (secret, like the keys).
    KeyDigest d = keyer.digest(memo_seed_label, sizeof memo_seed_label);
    std::memcpy(&seed_.k0, d.data(), 8);
    std::memcpy(&seed_.k1, d.data() + 8, 8);
    fingerprint_ = keyer.fingerprint();
    table_ = &table;
}

StoredKey KeyMemo::miss(const ZoneKeyer& keyer, const SlotTable& table, const void* key,
                        size_t len) noexcept {
    if (len == 0 || len > max_key) {
        return table.make_key(keyer.digest(key, len));
    }
    if (table_ != &table || !same_digest(fingerprint_, keyer.fingerprint())) {
        reset(keyer, table);
    }
    Slot& s = slots_[siphash13(seed_, key, len) & (slots - 1)];
    s.key = table.make_key(keyer.digest(key, len));
    std::memcpy(s.bytes, key, len);
    s.len = static_cast<uint8_t>(len);
    return s.key;
}

}  // namespace throttle::core
