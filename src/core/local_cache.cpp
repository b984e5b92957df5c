// The local tier's table (see local_cache.hpp).
#include "core/local_cache.hpp"

#include <algorithm>
#include <cstring>
#include <new>

namespace throttle::core::cache {
namespace {

constexpr uint32_t nil = UINT32_MAX;

size_t align8(size_t n) noexcept {
    return (n + 7) & ~size_t(7);
}

// FNV-1a over the namespace, a separator and the identity digest: the user record's name. A
// collision only merges two users' generations (max): both lose local hits, neither is served
// the other's entries (entries are matched by their whole key).
uint64_t user_hash(std::string_view ns, std::string_view id) noexcept {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](std::string_view s) {
        for (unsigned char c : s) {
            h ^= c;
            h *= 1099511628211ull;
        }
    };
    mix(ns);
    h ^= 0xff;
    h *= 1099511628211ull;
    mix(id);
    h ^= h >> 29;
    return h | 1;  // 0 is an empty record
}

}  // namespace

struct LocalCache::Header {
    uint32_t magic;
    uint32_t version;
    uint64_t size;
    uint32_t ns_slots, user_slots, buckets, entries, blocks;
    uint32_t lru_head, lru_tail, free_entry, free_block;
    uint32_t used_entries, used_blocks;
    uint64_t off_ns, off_users, off_buckets, off_entries, off_next, off_blocks;
    uint64_t epoch;
    uint64_t user_evictions;
    uint64_t user_tick;
    uint64_t stores;
    uint64_t evictions;
};

struct LocalCache::NsSlot {
    uint64_t gen;
    uint64_t anon_gen;  // the anonymous identity's generation in this namespace
    uint8_t len;        // 0: free
    char name[ns_max];
};

struct LocalCache::UserSlot {
    uint64_t hash;  // 0: free
    uint64_t gen;
    uint64_t used;  // user_tick when last set or read
};

struct LocalCache::Entry {
    Sha256Digest key;
    uint64_t ns_gen, user_gen, epoch;
    int64_t stored_ms, fresh_until_ms, stale_until_ms;
    uint32_t size, first_block, nblocks;
    uint32_t prev, next, chain;  // LRU (prev: towards the head), bucket chain / free list
    uint16_t ns_slot;
    uint8_t id_len;
    uint8_t used;
    char id[id_max];
};

namespace {

struct View {
    LocalCache::Header* h;
    LocalCache::NsSlot* ns;
    LocalCache::UserSlot* users;
    uint32_t* buckets;
    LocalCache::Entry* entries;
    uint32_t* next;
    unsigned char* blocks;
};

View view_of(const LocalCache* self) noexcept {
    auto* base = reinterpret_cast<unsigned char*>(const_cast<LocalCache*>(self));
    auto* h = reinterpret_cast<LocalCache::Header*>(base);
    return View{h,
                reinterpret_cast<LocalCache::NsSlot*>(base + h->off_ns),
                reinterpret_cast<LocalCache::UserSlot*>(base + h->off_users),
                reinterpret_cast<uint32_t*>(base + h->off_buckets),
                reinterpret_cast<LocalCache::Entry*>(base + h->off_entries),
                reinterpret_cast<uint32_t*>(base + h->off_next),
                base + h->off_blocks};
}

struct Layout {
    uint32_t ns_slots, user_slots, buckets, entries, blocks;
    uint64_t off_ns, off_users, off_buckets, off_entries, off_next, off_blocks, end;
};

// Entries: one per 2 KB; user records: one per entry, at least 64, a multiple of the ways;
// blocks: the rest.
bool layout_for(size_t size, Layout& l) noexcept {
    size_t entries = std::max<size_t>(size / 2048, 16);
    size_t users = std::max<size_t>(entries, 64);
    users = (users + LocalCache::user_ways - 1) / LocalCache::user_ways * LocalCache::user_ways;
    l.ns_slots = LocalCache::ns_slots;
    l.user_slots = static_cast<uint32_t>(users);
    l.entries = static_cast<uint32_t>(entries);
    l.buckets = static_cast<uint32_t>(entries);
    l.off_ns = align8(sizeof(LocalCache::Header));
    l.off_users = align8(l.off_ns + sizeof(LocalCache::NsSlot) * l.ns_slots);
    l.off_buckets = align8(l.off_users + sizeof(LocalCache::UserSlot) * l.user_slots);
    l.off_entries = align8(l.off_buckets + sizeof(uint32_t) * l.buckets);
    l.off_next = align8(l.off_entries + sizeof(LocalCache::Entry) * l.entries);
    if (l.off_next >= size) {
        return false;
    }
    size_t left = size - l.off_next;
    size_t blocks = left / (LocalCache::block_size + sizeof(uint32_t) + 1);
    if (blocks < 16 || blocks >= nil) {
        return false;
    }
    l.blocks = static_cast<uint32_t>(blocks);
    l.off_blocks = align8(l.off_next + sizeof(uint32_t) * blocks);
    l.end = l.off_blocks + LocalCache::block_size * blocks;
    return l.end <= size;
}

int find_ns(const View& v, std::string_view ns) noexcept {
    for (uint32_t i = 0; i < v.h->ns_slots; i++) {
        const LocalCache::NsSlot& s = v.ns[i];
        if (s.len == 0) {
            return -1;  // slots fill in order and are never freed (but by clear())
        }
        if (s.len == ns.size() && std::memcmp(s.name, ns.data(), ns.size()) == 0) {
            return static_cast<int>(i);
        }
    }
    return -1;
}

int find_or_add_ns(const View& v, std::string_view ns) noexcept {
    if (ns.empty() || ns.size() > LocalCache::ns_max) {
        return -1;
    }
    for (uint32_t i = 0; i < v.h->ns_slots; i++) {
        LocalCache::NsSlot& s = v.ns[i];
        if (s.len == 0) {
            s.len = static_cast<uint8_t>(ns.size());
            std::memcpy(s.name, ns.data(), ns.size());
            s.gen = 0;
            s.anon_gen = 0;
            return static_cast<int>(i);
        }
        if (s.len == ns.size() && std::memcmp(s.name, ns.data(), ns.size()) == 0) {
            return static_cast<int>(i);
        }
    }
    return -1;
}

bool is_anon(std::string_view id) noexcept {
    return id == anonymous_identity;
}

LocalCache::UserSlot* find_user(const View& v, uint64_t hash) noexcept {
    uint32_t sets = v.h->user_slots / LocalCache::user_ways;
    LocalCache::UserSlot* set = v.users + (hash % sets) * LocalCache::user_ways;
    for (size_t i = 0; i < LocalCache::user_ways; i++) {
        if (set[i].hash == hash) {
            return &set[i];
        }
    }
    return nullptr;
}

// The user's record, created (evicting the set's least recently used) when missing.
LocalCache::UserSlot* user_record(const View& v, uint64_t hash) noexcept {
    if (LocalCache::UserSlot* u = find_user(v, hash)) {
        return u;
    }
    uint32_t sets = v.h->user_slots / LocalCache::user_ways;
    LocalCache::UserSlot* set = v.users + (hash % sets) * LocalCache::user_ways;
    LocalCache::UserSlot* victim = &set[0];
    for (size_t i = 0; i < LocalCache::user_ways; i++) {
        if (set[i].hash == 0) {
            victim = &set[i];
            break;
        }
        if (set[i].used < victim->used) {
            victim = &set[i];
        }
    }
    if (victim->hash != 0) {
        v.h->user_evictions++;  // lookups sent before this may not store users' entries
    }
    victim->hash = hash;
    victim->gen = 0;
    victim->used = ++v.h->user_tick;
    return victim;
}

uint32_t bucket_of(const View& v, const Sha256Digest& key) noexcept {
    uint32_t b;
    std::memcpy(&b, key.data(), sizeof(b));
    return b % v.h->buckets;
}

void lru_unlink(const View& v, uint32_t i) noexcept {
    LocalCache::Entry& e = v.entries[i];
    if (e.prev != nil) {
        v.entries[e.prev].next = e.next;
    } else {
        v.h->lru_head = e.next;
    }
    if (e.next != nil) {
        v.entries[e.next].prev = e.prev;
    } else {
        v.h->lru_tail = e.prev;
    }
    e.prev = e.next = nil;
}

void lru_push_front(const View& v, uint32_t i) noexcept {
    LocalCache::Entry& e = v.entries[i];
    e.prev = nil;
    e.next = v.h->lru_head;
    if (v.h->lru_head != nil) {
        v.entries[v.h->lru_head].prev = i;
    } else {
        v.h->lru_tail = i;
    }
    v.h->lru_head = i;
}

void remove_entry(const View& v, uint32_t i) noexcept {
    LocalCache::Entry& e = v.entries[i];
    uint32_t* link = &v.buckets[bucket_of(v, e.key)];
    while (*link != nil && *link != i) {
        link = &v.entries[*link].chain;
    }
    if (*link == i) {
        *link = e.chain;
    }
    lru_unlink(v, i);
    uint32_t b = e.first_block;
    while (b != nil) {
        uint32_t n = v.next[b];
        v.next[b] = v.h->free_block;
        v.h->free_block = b;
        v.h->used_blocks--;
        b = n;
    }
    e.used = 0;
    e.first_block = nil;
    e.chain = v.h->free_entry;
    v.h->free_entry = i;
    v.h->used_entries--;
}

uint32_t find_entry(const View& v, const LocalKey& k, int ns) noexcept {
    for (uint32_t i = v.buckets[bucket_of(v, k.key)]; i != nil; i = v.entries[i].chain) {
        const LocalCache::Entry& e = v.entries[i];
        if (e.key == k.key && e.ns_slot == ns && e.id_len == k.id.size() &&
            std::memcmp(e.id, k.id.data(), k.id.size()) == 0) {
            return i;
        }
    }
    return nil;
}

void reset(const View& v) noexcept {
    v.h->lru_head = v.h->lru_tail = nil;
    v.h->used_entries = v.h->used_blocks = 0;
    std::memset(v.ns, 0, sizeof(LocalCache::NsSlot) * v.h->ns_slots);
    std::memset(v.users, 0, sizeof(LocalCache::UserSlot) * v.h->user_slots);
    for (uint32_t i = 0; i < v.h->buckets; i++) {
        v.buckets[i] = nil;
    }
    for (uint32_t i = 0; i < v.h->entries; i++) {
        LocalCache::Entry& e = v.entries[i];
        std::memset(&e, 0, sizeof(e));
        e.prev = e.next = nil;
        e.first_block = nil;
        e.chain = i + 1 < v.h->entries ? i + 1 : nil;
    }
    v.h->free_entry = 0;
    for (uint32_t i = 0; i < v.h->blocks; i++) {
        v.next[i] = i + 1 < v.h->blocks ? i + 1 : nil;
    }
    v.h->free_block = 0;
}

}  // namespace

size_t LocalCache::min_size() noexcept {
    return 64 * 1024;
}

size_t LocalCache::max_entry_for(size_t size) noexcept {
    Layout l;
    if (!layout_for(size, l)) {
        return 0;
    }
    return size_t(l.blocks / 4) * block_size;
}

LocalCache* LocalCache::create(void* mem, size_t size) noexcept {
    Layout l;
    if (mem == nullptr || size < min_size() || !layout_for(size, l)) {
        return nullptr;
    }
    auto* h = new (mem) Header{};
    h->magic = magic_value;
    h->version = 1;
    h->size = size;
    h->ns_slots = l.ns_slots;
    h->user_slots = l.user_slots;
    h->buckets = l.buckets;
    h->entries = l.entries;
    h->blocks = l.blocks;
    h->off_ns = l.off_ns;
    h->off_users = l.off_users;
    h->off_buckets = l.off_buckets;
    h->off_entries = l.off_entries;
    h->off_next = l.off_next;
    h->off_blocks = l.off_blocks;
    h->epoch = 1;
    auto* self = static_cast<LocalCache*>(mem);
    reset(view_of(self));
    return self;
}

LocalCache* LocalCache::attach(void* mem, size_t size) noexcept {
    Layout l;
    if (mem == nullptr || size < min_size() || !layout_for(size, l)) {
        return nullptr;
    }
    auto* h = static_cast<Header*>(mem);
    if (h->magic != magic_value || h->version != 1 || h->size != size || h->entries != l.entries ||
        h->blocks != l.blocks || h->user_slots != l.user_slots || h->off_blocks != l.off_blocks) {
        return nullptr;
    }
    auto* self = static_cast<LocalCache*>(mem);
    // A reload: workers that kept the old subscribers are gone; the new ones subscribe and bump
    // the epoch themselves. Entries stay until then.
    return self;
}

LocalSnapshot LocalCache::snapshot() const noexcept {
    View v = view_of(this);
    return LocalSnapshot{v.h->epoch, v.h->user_evictions};
}

size_t LocalCache::max_entry() const noexcept {
    View v = view_of(this);
    return size_t(v.h->blocks / 4) * block_size;
}

void LocalCache::observe(std::string_view ns, std::string_view id, const Generation& gen,
                         const LocalSnapshot& seen) noexcept {
    View v = view_of(this);
    if (seen.epoch != v.h->epoch) {
        return;  // sent before the mirror started over
    }
    int s = find_or_add_ns(v, ns);
    if (s < 0) {
        return;
    }
    NsSlot& slot = v.ns[s];
    slot.gen = std::max(slot.gen, gen.ns);
    if (is_anon(id)) {
        slot.anon_gen = std::max(slot.anon_gen, gen.user);
    } else if (UserSlot* u = find_user(v, user_hash(ns, id))) {
        u->gen = std::max(u->gen, gen.user);  // absent: nothing of this user is served anyway
    }
}

void LocalCache::ns_generation_seen(std::string_view ns, uint64_t gen) noexcept {
    View v = view_of(this);
    int s = find_or_add_ns(v, ns);
    if (s >= 0) {
        v.ns[s].gen = std::max(v.ns[s].gen, gen);
    }
}

void LocalCache::user_generation_seen(std::string_view ns, std::string_view id,
                                      uint64_t gen) noexcept {
    View v = view_of(this);
    if (is_anon(id)) {
        int s = find_or_add_ns(v, ns);
        if (s >= 0) {
            v.ns[s].anon_gen = std::max(v.ns[s].anon_gen, gen);
        }
        return;
    }
    UserSlot* u = user_record(v, user_hash(ns, id));
    u->gen = std::max(u->gen, gen);
    u->used = ++v.h->user_tick;
}

void LocalCache::bump_epoch() noexcept {
    View v = view_of(this);
    v.h->epoch++;
    // Every entry is unusable now, and only lookups sent from now on may store or observe: the
    // mirror starts over from what they (and the messages from now on) report. A Redis that
    // restarted empty counts its generations from 0 again; a mirror kept from before would
    // refuse every new entry.
    for (uint32_t i = 0; i < v.h->ns_slots; i++) {
        v.ns[i].gen = 0;
        v.ns[i].anon_gen = 0;
    }
    std::memset(v.users, 0, sizeof(UserSlot) * v.h->user_slots);
}

void LocalCache::clear() noexcept {
    View v = view_of(this);
    v.h->epoch++;
    reset(v);
}

LocalStats LocalCache::stats() const noexcept {
    View v = view_of(this);
    LocalStats s;
    s.entries = v.h->used_entries;
    s.blocks_used = v.h->used_blocks;
    s.blocks = v.h->blocks;
    s.stores = v.h->stores;
    s.evictions = v.h->evictions;
    s.user_evictions = v.h->user_evictions;
    s.epoch = v.h->epoch;
    return s;
}

bool LocalCache::put(const LocalKey& k, const Generation& gen, const LocalSnapshot& seen,
                     std::string_view bytes, int64_t fresh_until_ms, int64_t stale_until_ms,
                     int64_t now_ms) noexcept {
    View v = view_of(this);
    Header& h = *v.h;
    if (k.id.empty() || k.id.size() > id_max || bytes.empty() || bytes.size() > max_entry() ||
        stale_until_ms <= now_ms || fresh_until_ms <= now_ms) {
        return false;
    }
    const bool anon = is_anon(k.id);
    if (seen.epoch != h.epoch || (!anon && seen.user_evictions != h.user_evictions)) {
        return false;  // messages may have been lost, or a user record forgotten, since
    }
    int s = find_or_add_ns(v, k.ns);
    if (s < 0) {
        return false;
    }
    NsSlot& slot = v.ns[s];
    if (gen.ns < slot.gen) {
        return false;  // a purge this host heard of since the lookup
    }
    slot.gen = gen.ns;
    if (anon) {
        if (gen.user < slot.anon_gen) {
            return false;
        }
        slot.anon_gen = gen.user;
    } else {
        UserSlot* u = user_record(v, user_hash(k.ns, k.id));
        // Making room for this record may forget another user's (user_evictions moves):
        // harmless for this one, but a put of a lookup sent before now is refused.
        if (gen.user < u->gen) {
            return false;  // the user wrote since the lookup
        }
        u->gen = gen.user;
        u->used = ++h.user_tick;
    }
    uint32_t old = find_entry(v, k, s);
    if (old != nil) {
        remove_entry(v, old);
    }
    uint32_t need = static_cast<uint32_t>((bytes.size() + block_size - 1) / block_size);
    while ((h.blocks - h.used_blocks < need || h.free_entry == nil) && h.lru_tail != nil) {
        remove_entry(v, h.lru_tail);
        h.evictions++;
    }
    if (h.blocks - h.used_blocks < need || h.free_entry == nil) {
        return false;
    }
    uint32_t i = h.free_entry;
    Entry& e = v.entries[i];
    h.free_entry = e.chain;
    h.used_entries++;
    e.key = k.key;
    e.ns_gen = gen.ns;
    e.user_gen = gen.user;
    e.epoch = h.epoch;
    e.stored_ms = now_ms;
    e.fresh_until_ms = fresh_until_ms;
    e.stale_until_ms = stale_until_ms;
    e.size = static_cast<uint32_t>(bytes.size());
    e.nblocks = need;
    e.ns_slot = static_cast<uint16_t>(s);
    e.id_len = static_cast<uint8_t>(k.id.size());
    std::memcpy(e.id, k.id.data(), k.id.size());
    e.used = 1;
    // Blocks, in order.
    e.first_block = nil;
    uint32_t* link = &e.first_block;
    size_t off = 0;
    for (uint32_t n = 0; n < need; n++) {
        uint32_t b = h.free_block;
        h.free_block = v.next[b];
        h.used_blocks++;
        v.next[b] = nil;
        *link = b;
        link = &v.next[b];
        size_t len = std::min(block_size, bytes.size() - off);
        std::memcpy(v.blocks + size_t(b) * block_size, bytes.data() + off, len);
        off += len;
    }
    uint32_t& bucket = v.buckets[bucket_of(v, k.key)];
    e.chain = bucket;
    bucket = i;
    lru_push_front(v, i);
    h.stores++;
    return true;
}

bool LocalCache::get(const LocalKey& k, int64_t now_ms, int64_t max_age_ms, std::string& out,
                     Generation* gen) noexcept {
    View v = view_of(this);
    int s = find_ns(v, k.ns);
    if (s < 0) {
        return false;
    }
    uint32_t i = find_entry(v, k, s);
    if (i == nil) {
        return false;
    }
    Entry& e = v.entries[i];
    const NsSlot& slot = v.ns[s];
    bool usable = e.epoch == v.h->epoch && e.ns_gen == slot.gen && now_ms < e.stale_until_ms &&
                  (now_ms < e.stored_ms || now_ms - e.stored_ms <= max_age_ms);  // another
                                                                                 // worker's clock
    if (usable) {
        if (is_anon(k.id)) {
            usable = e.user_gen == slot.anon_gen;
        } else {
            UserSlot* u = find_user(v, user_hash(k.ns, k.id));
            usable = u != nullptr && u->gen == e.user_gen;
            if (usable) {
                u->used = ++v.h->user_tick;
            }
        }
    }
    if (!usable) {
        remove_entry(v, i);
        return false;
    }
    if (now_ms >= e.fresh_until_ms) {
        return false;  // stale: Redis decides (refresh lock, UPDATING); kept for its local age
    }
    try {
        out.resize(e.size);
    } catch (...) {
        return false;
    }
    size_t off = 0;
    for (uint32_t b = e.first_block; b != nil && off < e.size; b = v.next[b]) {
        size_t len = std::min(block_size, size_t(e.size) - off);
        std::memcpy(&out[off], v.blocks + size_t(b) * block_size, len);
        off += len;
    }
    if (gen != nullptr) {
        gen->ns = e.ns_gen;
        gen->user = e.user_gen;
    }
    lru_unlink(v, i);
    lru_push_front(v, i);
    return true;
}

}  // namespace throttle::core::cache
