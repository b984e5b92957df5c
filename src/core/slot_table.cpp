// The slot table: one block of memory, 32-bit links, no allocation. See slot_table.hpp.
#include "core/slot_table.hpp"

#include <cstring>
#include <initializer_list>
#include <new>
#include <type_traits>

namespace throttle::core {

namespace {

constexpr uint32_t none = UINT32_MAX;  // "no slot" in every link
constexpr uint32_t slot_used = 1;
constexpr uint32_t slot_listed = 2;  // in the changed keys' ring
constexpr size_t min_capacity = 8;
// Indices must stay below the sentinel.
constexpr size_t max_capacity = UINT32_MAX - 1;
constexpr size_t max_buckets = size_t{1} << 31;

constexpr size_t align8(size_t n) {
    return (n + 7) & ~size_t{7};
}

// a == b in two 8-byte compares (std::array's == calls memcmp).
bool same_digest(const KeyDigest& a, const KeyDigest& b) noexcept {
    static_assert(key_digest_len == 16);
    uint64_t a0, a1, b0, b1;
    std::memcpy(&a0, a.data(), 8);
    std::memcpy(&a1, a.data() + 8, 8);
    std::memcpy(&b0, b.data(), 8);
    std::memcpy(&b1, b.data() + 8, 8);
    return a0 == b0 && a1 == b1;
}

}  // namespace

struct SlotTable::Header {
    uint32_t magic;
    uint32_t nbuckets;  // power of two
    uint32_t capacity;
    uint32_t used;
    uint32_t lru_head;  // most recently used
    uint32_t lru_tail;  // least recently used
    uint32_t free_head;
    uint32_t reserved;
    uint64_t size;  // bytes of the whole block, checked by attach()
    uint64_t slots_offset;
    uint64_t evictions;
    uint64_t tag;
    uint64_t ring_offset;    // the changed keys' ring: uint32 slot indices
    uint32_t ring_size;      // entries the ring holds
    uint32_t ring_head;      // the oldest entry
    uint32_t ring_count;     // entries in the ring
    uint32_t ring_overflow;  // a key changed while the ring was full: next pass walks all
    SipKey seed;
    OwnSecret own_secret;
    KeyDigest keying;
};

struct SlotTable::Slot {
    uint32_t next;      // bucket chain (or free list when not in use)
    uint32_t lru_prev;  // towards the most recently used
    uint32_t lru_next;  // towards the least recently used
    uint32_t in_use;    // slot_used | slot_listed
    uint64_t hash;
    State state;
    KeyDigest key;
};

namespace {

struct Layout {
    size_t nbuckets = 0;
    size_t capacity = 0;
    size_t ring_offset = 0;
    size_t ring_size = 0;
    size_t slots_offset = 0;
};

// The changed keys' ring holds a quarter of the slots (at least one entry).
size_t ring_size_for(size_t capacity) {
    return capacity / 4 > 0 ? capacity / 4 : 1;
}

// The one layout a block of `size` bytes gets; create() and attach() must agree on it.
// Buckets: the largest power of two not above the number of slots that would fit with one
// bucket head each, so chains average between 1 and 2 entries and a key costs at most
// sizeof(Slot) + 4 bytes, plus 1 byte of the changed keys' ring.
template <typename Header, typename Slot>
bool compute_layout(size_t size, Layout& out) {
    if (size <= sizeof(Header)) {
        return false;
    }
    size_t avail = size - sizeof(Header);
    size_t estimate = avail / (sizeof(Slot) + sizeof(uint32_t) + 1);
    size_t nbuckets = 1;
    while (nbuckets * 2 <= estimate && nbuckets * 2 <= max_buckets) {
        nbuckets *= 2;
    }
    size_t ring_offset = sizeof(Header) + nbuckets * sizeof(uint32_t);
    if (ring_offset + 8 > size) {
        return false;
    }
    // Slots and ring share what is left: a slot costs sizeof(Slot) and a quarter of an entry.
    size_t capacity = (size - ring_offset - 8) / (sizeof(Slot) + 1);
    if (capacity > max_capacity) {
        capacity = max_capacity;
    }
    size_t slots_offset = 0;
    for (;; capacity--) {
        if (capacity < min_capacity) {
            return false;
        }
        slots_offset = align8(ring_offset + ring_size_for(capacity) * sizeof(uint32_t));
        if (slots_offset + capacity * sizeof(Slot) <= size) {
            break;
        }
    }
    out.nbuckets = nbuckets;
    out.capacity = capacity;
    out.ring_offset = ring_offset;
    out.ring_size = ring_size_for(capacity);
    out.slots_offset = slots_offset;
    return true;
}

}  // namespace

static_assert(sizeof(State) == 32);
static_assert(std::is_trivially_copyable_v<State>);

SlotTable::Header* SlotTable::header() noexcept {
    return reinterpret_cast<Header*>(this);
}

const SlotTable::Header* SlotTable::header() const noexcept {
    return reinterpret_cast<const Header*>(this);
}

namespace {

// Views of the block's three regions, computed from the table's own address every time
// (nothing absolute is stored, so the block may be mapped anywhere).
template <typename Header, typename Slot>
struct View {
    Header* h;
    uint32_t* buckets;
    uint32_t* ring;
    Slot* slots;

    explicit View(Header* hdr)
        : h(hdr),
          buckets(
              reinterpret_cast<uint32_t*>(reinterpret_cast<unsigned char*>(hdr) + sizeof(Header))),
          ring(reinterpret_cast<uint32_t*>(reinterpret_cast<unsigned char*>(hdr) +
                                           hdr->ring_offset)),
          slots(
              reinterpret_cast<Slot*>(reinterpret_cast<unsigned char*>(hdr) + hdr->slots_offset)) {}

    // Lists slot i as changed (once), or notes the overflow when the ring is full.
    void list(uint32_t i) {
        Slot& s = slots[i];
        if (s.in_use & slot_listed) {
            return;
        }
        if (h->ring_count >= h->ring_size) {
            h->ring_overflow = 1;
            return;
        }
        uint32_t pos = h->ring_head + h->ring_count;
        if (pos >= h->ring_size) {
            pos -= h->ring_size;
        }
        ring[pos] = i;
        h->ring_count++;
        s.in_use |= slot_listed;
    }

    // Takes the oldest ring entry (unlisting its slot); none when the ring is empty.
    uint32_t unlist() {
        if (h->ring_count == 0) {
            return none;
        }
        uint32_t i = ring[h->ring_head];
        h->ring_head = h->ring_head + 1 < h->ring_size ? h->ring_head + 1 : 0;
        h->ring_count--;
        if (i >= h->capacity) {
            return none;  // cannot happen in a table this code laid out
        }
        slots[i].in_use &= ~slot_listed;
        return i;
    }

    uint32_t& bucket_of(uint64_t hash) { return buckets[hash & (h->nbuckets - 1)]; }

    void lru_unlink(uint32_t i) {
        Slot& s = slots[i];
        if (s.lru_prev != none) {
            slots[s.lru_prev].lru_next = s.lru_next;
        } else {
            h->lru_head = s.lru_next;
        }
        if (s.lru_next != none) {
            slots[s.lru_next].lru_prev = s.lru_prev;
        } else {
            h->lru_tail = s.lru_prev;
        }
        s.lru_prev = none;
        s.lru_next = none;
    }

    void lru_push_front(uint32_t i) {
        Slot& s = slots[i];
        s.lru_prev = none;
        s.lru_next = h->lru_head;
        if (h->lru_head != none) {
            slots[h->lru_head].lru_prev = i;
        } else {
            h->lru_tail = i;
        }
        h->lru_head = i;
    }

    void chain_unlink(uint32_t i) {
        uint32_t* link = &bucket_of(slots[i].hash);
        while (*link != none) {
            if (*link == i) {
                *link = slots[i].next;
                slots[i].next = none;
                return;
            }
            link = &slots[*link].next;
        }
    }

    uint32_t chain_find(const StoredKey& k) {
        for (uint32_t i = bucket_of(k.hash); i != none; i = slots[i].next) {
            const Slot& s = slots[i];
            if (s.hash == k.hash && same_digest(s.key, k.digest)) {
                return i;
            }
        }
        return none;
    }

    // Empties every bucket and slot and threads all slots on the free list.
    void reset() {
        std::memset(static_cast<void*>(buckets), 0xff, h->nbuckets * sizeof(uint32_t));
        std::memset(static_cast<void*>(slots), 0, size_t{h->capacity} * sizeof(Slot));
        for (uint32_t i = 0; i < h->capacity; i++) {
            slots[i].next = i + 1 < h->capacity ? i + 1 : none;
            slots[i].lru_prev = none;
            slots[i].lru_next = none;
        }
        h->free_head = 0;
        h->lru_head = none;
        h->lru_tail = none;
        h->used = 0;
        h->evictions = 0;
        h->ring_head = 0;
        h->ring_count = 0;
        h->ring_overflow = 0;
    }
};

}  // namespace

SlotTable* SlotTable::create(void* mem, size_t size, const SipKey& seed,
                             const OwnSecret& secret) noexcept {
    static_assert(sizeof(Slot) == 72, "a slot is 72 bytes");
    static_assert(sizeof(Header) % 8 == 0);
    static_assert(alignof(Header) <= 8 && alignof(Slot) <= 8);
    static_assert(std::is_trivially_copyable_v<Header> && std::is_trivially_copyable_v<Slot>);

    if (mem == nullptr || reinterpret_cast<uintptr_t>(mem) % 8 != 0) {
        return nullptr;
    }
    Layout l;
    if (!compute_layout<Header, Slot>(size, l)) {
        return nullptr;
    }

    Header* h = ::new (mem) Header();
    h->nbuckets = static_cast<uint32_t>(l.nbuckets);
    h->capacity = static_cast<uint32_t>(l.capacity);
    h->size = size;
    h->slots_offset = l.slots_offset;
    h->ring_offset = l.ring_offset;
    h->ring_size = static_cast<uint32_t>(l.ring_size);
    h->tag = 0;
    h->seed = seed;
    h->own_secret = secret;
    h->keying = KeyDigest{};
    View<Header, Slot>(h).reset();
    h->magic = magic_value;  // last: a half-built table never attaches
    return reinterpret_cast<SlotTable*>(mem);
}

SlotTable* SlotTable::attach(void* mem, size_t size) noexcept {
    if (mem == nullptr || reinterpret_cast<uintptr_t>(mem) % 8 != 0) {
        return nullptr;
    }
    Layout l;
    if (!compute_layout<Header, Slot>(size, l)) {
        return nullptr;
    }
    Header* h = reinterpret_cast<Header*>(mem);
    if (h->magic != magic_value || h->size != size || h->nbuckets != l.nbuckets ||
        h->capacity != l.capacity || h->slots_offset != l.slots_offset || h->used > h->capacity ||
        h->ring_offset != l.ring_offset || h->ring_size != l.ring_size ||
        h->ring_head >= h->ring_size || h->ring_count > h->ring_size) {
        return nullptr;
    }
    for (uint32_t link : {h->lru_head, h->lru_tail, h->free_head}) {
        if (link != none && link >= h->capacity) {
            return nullptr;
        }
    }
    return reinterpret_cast<SlotTable*>(mem);
}

size_t SlotTable::bytes_per_key() noexcept {
    return sizeof(Slot) + sizeof(uint32_t) + 1;  // slot, bucket head, a quarter ring entry
}

StoredKey SlotTable::make_key(const KeyDigest& digest) const noexcept {
    StoredKey k;
    k.digest = digest;
    k.hash = siphash24(header()->seed, digest.data(), digest.size());
    return k;
}

LookupResult SlotTable::lookup(const StoredKey& k) noexcept {
    View<Header, Slot> v(header());
    Header* h = v.h;
    LookupResult r;

    uint32_t i = v.chain_find(k);
    if (i != none) {
        if (h->lru_head != i) {
            v.lru_unlink(i);
            v.lru_push_front(i);
        }
        v.list(i);
        r.state = &v.slots[i].state;
        return r;
    }

    if (h->free_head != none) {
        i = h->free_head;
        h->free_head = v.slots[i].next;
    } else {
        i = h->lru_tail;
        Slot& victim = v.slots[i];
        v.chain_unlink(i);
        v.lru_unlink(i);
        r.evicted = true;
        std::memcpy(static_cast<void*>(&r.victim), &victim.state, sizeof(State));
        h->evictions++;
        h->used--;
    }

    Slot& s = v.slots[i];
    uint32_t listed = s.in_use & slot_listed;  // a reused slot may still be in the ring
    std::memset(static_cast<void*>(&s), 0, sizeof s);
    s.hash = k.hash;
    s.in_use = slot_used | listed;
    s.key = k.digest;
    uint32_t& head = v.bucket_of(k.hash);
    s.next = head;
    head = i;
    v.lru_push_front(i);
    v.list(i);
    h->used++;

    r.state = &s.state;
    r.inserted = true;
    return r;
}

State* SlotTable::find(const StoredKey& key) noexcept {
    View<Header, Slot> v(header());
    uint32_t i = v.chain_find(key);
    return i == none ? nullptr : &v.slots[i].state;
}

bool SlotTable::mark_changed(const StoredKey& key) noexcept {
    View<Header, Slot> v(header());
    uint32_t i = v.chain_find(key);
    if (i == none) {
        return false;
    }
    v.list(i);
    return true;
}

SlotTable::ChangedWalk SlotTable::begin_changed() noexcept {
    Header* h = header();
    ChangedWalk w;
    w.full = h->ring_overflow != 0;
    h->ring_overflow = 0;
    w.next_slot = 0;
    w.listed = h->ring_count;
    return w;
}

bool SlotTable::visit_changed(ChangedWalk& w, size_t max,
                              void (*cb)(void*, const StoredKey&, State&), void* arg) noexcept {
    View<Header, Slot> v(header());
    if (max == 0) {
        max = 1;
    }
    auto visit_slot = [&](uint32_t i) {
        Slot& s = v.slots[i];
        if (s.in_use & slot_used) {
            StoredKey k;
            k.hash = s.hash;
            k.digest = s.key;
            cb(arg, k, s.state);
        }
    };
    // A full walk by slot index: a key keeps its slot while it lives, so releasing the lock
    // between steps loses nothing (a key inserted meanwhile is listed by its lookup).
    while (w.full && max > 0) {
        if (w.next_slot >= v.h->capacity) {
            w.full = false;
            break;
        }
        visit_slot(w.next_slot++);
        max--;
    }
    // Then the ring, oldest first: the entries present when the pass began come first.
    while (!w.full && w.listed > 0 && max > 0) {
        w.listed--;
        max--;
        uint32_t i = v.unlist();
        if (i == none) {
            w.listed = 0;  // the ring was emptied meanwhile (clear())
            break;
        }
        visit_slot(i);
    }
    return w.full || w.listed > 0;
}

size_t SlotTable::changed_listed() const noexcept {
    return header()->ring_count;
}

bool SlotTable::changed_overflow() const noexcept {
    return header()->ring_overflow != 0;
}

size_t SlotTable::changed_capacity() const noexcept {
    return header()->ring_size;
}

void SlotTable::clear() noexcept {
    View<Header, Slot>(header()).reset();
}

const OwnSecret& SlotTable::own_secret() const noexcept {
    return header()->own_secret;
}

const KeyDigest& SlotTable::keying() const noexcept {
    return header()->keying;
}

void SlotTable::set_keying(const KeyDigest& fingerprint) noexcept {
    header()->keying = fingerprint;
}

size_t SlotTable::capacity() const noexcept {
    return header()->capacity;
}

size_t SlotTable::size() const noexcept {
    return header()->used;
}

uint64_t SlotTable::evictions() const noexcept {
    return header()->evictions;
}

uint64_t SlotTable::tag() const noexcept {
    return header()->tag;
}

void SlotTable::set_tag(uint64_t tag) noexcept {
    header()->tag = tag;
}

void SlotTable::visit(void (*cb)(void*, const StoredKey&, State&), void* arg) noexcept {
    View<Header, Slot> v(header());
    for (uint32_t i = v.h->lru_head; i != none;) {
        Slot& s = v.slots[i];
        uint32_t next = s.lru_next;
        StoredKey k;
        k.hash = s.hash;
        k.digest = s.key;
        cb(arg, k, s.state);
        i = next;
    }
}

}  // namespace throttle::core
