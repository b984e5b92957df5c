// The identity table: one block of memory, 32-bit links, no allocation. See identity_table.hpp.
#include "core/identity_table.hpp"

#include <cstring>
#include <initializer_list>
#include <new>
#include <type_traits>

namespace throttle::core::identity {

namespace {

constexpr uint32_t none = UINT32_MAX;
constexpr size_t min_capacity = 8;
constexpr size_t max_buckets = size_t{1} << 31;
constexpr int expire_per_put = 2;  // expired slots taken from the LRU end before inserting

constexpr size_t align8(size_t n) {
    return (n + 7) & ~size_t{7};
}

}  // namespace

struct Table::Header {
    uint32_t magic;
    uint32_t nbuckets;  // power of two
    uint32_t capacity;
    uint32_t used;
    uint32_t lru_head;
    uint32_t lru_tail;
    uint32_t free_head;
    uint32_t reserved;
    uint64_t size;
    uint64_t slots_offset;
    uint64_t evictions;
};

struct Table::Slot {
    uint32_t next;  // bucket chain, or free list
    uint32_t lru_prev;
    uint32_t lru_next;
    uint8_t kind;  // Kind; 0 when free
    uint8_t id_len;
    uint8_t pad[2];
    int64_t expires_ms;
    uint8_t digest[32];
    char id[user_id_max];
};

namespace {

struct Layout {
    size_t nbuckets = 0;
    size_t capacity = 0;
    size_t slots_offset = 0;
};

template <typename Header, typename Slot>
bool compute_layout(size_t size, Layout& out) {
    if (size <= sizeof(Header)) {
        return false;
    }
    size_t estimate = (size - sizeof(Header)) / (sizeof(Slot) + sizeof(uint32_t));
    size_t nbuckets = 1;
    while (nbuckets * 2 <= estimate && nbuckets * 2 <= max_buckets) {
        nbuckets *= 2;
    }
    size_t slots_offset = align8(sizeof(Header) + nbuckets * sizeof(uint32_t));
    if (slots_offset > size) {
        return false;
    }
    size_t capacity = (size - slots_offset) / sizeof(Slot);
    if (capacity < min_capacity) {
        return false;
    }
    if (capacity > UINT32_MAX - 1) {
        capacity = UINT32_MAX - 1;
    }
    out = Layout{nbuckets, capacity, slots_offset};
    return true;
}

uint64_t bucket_hash(const uint8_t* digest) noexcept {
    uint64_t h;
    std::memcpy(&h, digest, sizeof h);
    return h;
}

template <typename Header, typename Slot>
struct View {
    Header* h;
    uint32_t* buckets;
    Slot* slots;

    explicit View(void* mem)
        : h(static_cast<Header*>(mem)),
          buckets(reinterpret_cast<uint32_t*>(static_cast<unsigned char*>(mem) + sizeof(Header))),
          slots(reinterpret_cast<Slot*>(static_cast<unsigned char*>(mem) + h->slots_offset)) {}

    uint32_t& bucket_of(const uint8_t* digest) {
        return buckets[bucket_hash(digest) & (h->nbuckets - 1)];
    }

    void lru_unlink(uint32_t i) {
        Slot& s = slots[i];
        (s.lru_prev != none ? slots[s.lru_prev].lru_next : h->lru_head) = s.lru_next;
        (s.lru_next != none ? slots[s.lru_next].lru_prev : h->lru_tail) = s.lru_prev;
        s.lru_prev = none;
        s.lru_next = none;
    }

    void lru_push_front(uint32_t i) {
        Slot& s = slots[i];
        s.lru_prev = none;
        s.lru_next = h->lru_head;
        (h->lru_head != none ? slots[h->lru_head].lru_prev : h->lru_tail) = i;
        h->lru_head = i;
    }

    uint32_t find(const uint8_t* digest) {
        for (uint32_t i = bucket_of(digest); i != none; i = slots[i].next) {
            if (std::memcmp(slots[i].digest, digest, 32) == 0) {
                return i;
            }
        }
        return none;
    }

    // Unlinks slot i from its chain and the LRU list and puts it on the free list.
    void release(uint32_t i) {
        uint32_t* link = &bucket_of(slots[i].digest);
        while (*link != none && *link != i) {
            link = &slots[*link].next;
        }
        if (*link == i) {
            *link = slots[i].next;
        }
        lru_unlink(i);
        std::memset(static_cast<void*>(&slots[i]), 0, sizeof(Slot));
        slots[i].lru_prev = none;
        slots[i].lru_next = none;
        slots[i].next = h->free_head;
        h->free_head = i;
        h->used--;
    }

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
    }
};

using TableView = View<Table::Header, Table::Slot>;

}  // namespace

Table* Table::create(void* mem, size_t size) noexcept {
    static_assert(sizeof(Slot) == 120, "a slot is 120 bytes");
    static_assert(sizeof(Header) % 8 == 0);
    static_assert(std::is_trivially_copyable_v<Header> && std::is_trivially_copyable_v<Slot>);
    Layout l;
    if (mem == nullptr || reinterpret_cast<uintptr_t>(mem) % 8 != 0 ||
        !compute_layout<Header, Slot>(size, l)) {
        return nullptr;
    }
    Header* h = ::new (mem) Header();
    h->nbuckets = static_cast<uint32_t>(l.nbuckets);
    h->capacity = static_cast<uint32_t>(l.capacity);
    h->size = size;
    h->slots_offset = l.slots_offset;
    TableView(mem).reset();
    h->magic = magic_value;  // last: a half-built table never attaches
    return reinterpret_cast<Table*>(mem);
}

Table* Table::attach(void* mem, size_t size) noexcept {
    Layout l;
    if (mem == nullptr || reinterpret_cast<uintptr_t>(mem) % 8 != 0 ||
        !compute_layout<Header, Slot>(size, l)) {
        return nullptr;
    }
    auto* h = static_cast<Header*>(mem);
    if (h->magic != magic_value || h->size != size || h->nbuckets != l.nbuckets ||
        h->capacity != l.capacity || h->slots_offset != l.slots_offset || h->used > h->capacity) {
        return nullptr;
    }
    for (uint32_t link : {h->lru_head, h->lru_tail, h->free_head}) {
        if (link != none && link >= h->capacity) {
            return nullptr;
        }
    }
    return reinterpret_cast<Table*>(mem);
}

size_t Table::bytes_per_key() noexcept {
    return sizeof(Slot) + sizeof(uint32_t);
}

Entry Table::find(const Sha256Digest& digest, int64_t now) noexcept {
    TableView v(this);
    Entry e;
    uint32_t i = v.find(digest.data());
    if (i == none) {
        return e;
    }
    Slot& s = v.slots[i];
    if (s.expires_ms <= now) {
        v.release(i);
        return e;
    }
    if (v.h->lru_head != i) {
        v.lru_unlink(i);
        v.lru_push_front(i);
    }
    e.kind = static_cast<Kind>(s.kind);
    e.id_len = s.id_len;
    std::memcpy(e.id, s.id, s.id_len);
    e.expires_ms = s.expires_ms;
    return e;
}

void Table::put(const Sha256Digest& digest, const Resolution& r, int64_t expires_ms,
                int64_t now) noexcept {
    if (r.kind == Kind::none || (r.kind == Kind::user && !valid_user_id(r.id))) {
        return;
    }
    TableView v(this);
    Header* h = v.h;
    uint32_t i = v.find(digest.data());
    if (i != none) {
        v.release(i);
    }
    for (int n = 0; n < expire_per_put && h->lru_tail != none; n++) {
        if (v.slots[h->lru_tail].expires_ms > now) {
            break;
        }
        v.release(h->lru_tail);
    }
    if (h->free_head == none) {
        v.release(h->lru_tail);
        h->evictions++;
    }
    i = h->free_head;
    h->free_head = v.slots[i].next;
    Slot& s = v.slots[i];
    std::memset(static_cast<void*>(&s), 0, sizeof s);
    s.kind = static_cast<uint8_t>(r.kind);
    if (r.kind == Kind::user) {
        s.id_len = static_cast<uint8_t>(r.id.size());
        std::memcpy(s.id, r.id.data(), r.id.size());
    }
    s.expires_ms = expires_ms;
    std::memcpy(s.digest, digest.data(), sizeof s.digest);
    uint32_t& head = v.bucket_of(s.digest);
    s.next = head;
    head = i;
    s.lru_prev = none;
    s.lru_next = none;
    v.lru_push_front(i);
    h->used++;
}

bool Table::erase(const Sha256Digest& digest) noexcept {
    TableView v(this);
    uint32_t i = v.find(digest.data());
    if (i == none) {
        return false;
    }
    v.release(i);
    return true;
}

void Table::clear() noexcept {
    TableView(this).reset();
}

size_t Table::capacity() const noexcept {
    return reinterpret_cast<const Header*>(this)->capacity;
}

size_t Table::size() const noexcept {
    return reinterpret_cast<const Header*>(this)->used;
}

uint64_t Table::evictions() const noexcept {
    return reinterpret_cast<const Header*>(this)->evictions;
}

}  // namespace throttle::core::identity
