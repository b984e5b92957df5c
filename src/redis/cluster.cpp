// Redis Cluster routing (layer: redis). See cluster.hpp for the contract.
//
// Every caller's command is an Op, kept in ops_ (its deadline: now + command_timeout_ms when the
// call is made, or the one evalsha() was given) until it is delivered, and handed to the Client
// of its slot's master with that deadline (SendOptions). The node's callback delivers it, or
// follows one redirection (MOVED: the map updated, ASK: ASKING first) by handing it to another
// node, with the same deadline: the node's Client fails it with Timeout at it. deadline_timer_
// covers only the Ops waiting for the slot map (in no Client). Failures known at once are
// marked on the Op and delivered by defer_timer_ (no allocation on that path).
#include "redis/cluster.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <stdexcept>
#include <utility>

#include "redis/message.hpp"
#include "redis/scripts.hpp"

namespace throttle::redis {
namespace {

using message::cat;
using message::printable;

constexpr std::array<uint16_t, 256> crc16_table() {
    std::array<uint16_t, 256> t{};
    for (unsigned i = 0; i < 256; i++) {
        uint16_t crc = static_cast<uint16_t>(i << 8);
        for (int bit = 0; bit < 8; bit++) {
            crc = static_cast<uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
        }
        t[i] = crc;
    }
    return t;
}

constexpr std::array<uint16_t, 256> kCrc16 = crc16_table();

// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster's crc16().
uint16_t crc16(std::string_view data) noexcept {
    uint16_t crc = 0;
    for (char c : data) {
        crc = static_cast<uint16_t>((crc << 8) ^
                                    kCrc16[((crc >> 8) ^ static_cast<unsigned char>(c)) & 0xff]);
    }
    return crc;
}

// "MOVED 3999 127.0.0.1:6381" / "ASK ...": the slot and the node's address. An empty host
// ("MOVED 3999 :6381", a node that does not know its own address) is the replying node's.
bool parse_redirect(std::string_view text, const Address& from, uint16_t& slot, Address& to) {
    size_t sp1 = text.find(' ');
    if (sp1 == std::string_view::npos) {
        return false;
    }
    size_t sp2 = text.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) {
        return false;
    }
    std::string_view slot_text = text.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view endpoint = text.substr(sp2 + 1);
    unsigned s = 0;
    auto [end, ec] = std::from_chars(slot_text.data(), slot_text.data() + slot_text.size(), s);
    if (ec != std::errc() || end != slot_text.data() + slot_text.size() || s >= kClusterSlots) {
        return false;
    }
    size_t colon = endpoint.rfind(':');
    if (colon == std::string_view::npos) {
        return false;
    }
    std::string_view port_text = endpoint.substr(colon + 1);
    unsigned port = 0;
    auto [pend, pec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (pec != std::errc() || pend != port_text.data() + port_text.size() || port == 0 ||
        port > 65535) {
        return false;
    }
    to = Address();
    to.host = colon == 0 ? from.host : std::string(endpoint.substr(0, colon));
    if (to.host.size() > 2 && to.host.front() == '[' && to.host.back() == ']') {
        to.host = to.host.substr(1, to.host.size() - 2);
    }
    to.port = static_cast<uint16_t>(port);
    slot = static_cast<uint16_t>(s);
    return to.valid();
}

void invoke(Callback& cb, Result&& result) noexcept {
    if (!cb) {
        return;
    }
    try {
        cb(std::move(result));
    } catch (...) {
    }
}

}  // namespace

uint16_t key_slot(std::string_view key) noexcept {
    size_t open = key.find('{');
    if (open != std::string_view::npos) {
        size_t close = key.find('}', open + 1);
        if (close != std::string_view::npos && close > open + 1) {
            key = key.substr(open + 1, close - open - 1);
        }
    }
    return static_cast<uint16_t>(crc16(key) & (kClusterSlots - 1));
}

struct ClusterClient::Node {
    Address address;
    std::string name;  // "127.0.0.1:7000"
    bool master = false;
    std::unique_ptr<Client> client;  // last: destroyed first, `address` still there meanwhile
};

struct ClusterClient::Op {
    Callback cb;
    uint64_t deadline = 0;
    uint16_t slot = 0;
    bool done = false;
    bool sent = false;                 // handed to a node: it may have run
    bool redirected = false;           // followed a MOVED or an ASK already
    bool waiting = false;              // in waiting_ (for the slot map)
    bool asking = false;               // the last send was after ASKING
    bool in_node = false;              // handed to a node's Client, its callback not called yet
    Failure deferred = Failure::None;  // failed, for defer_timer_ to deliver
    const Script* script = nullptr;    // EVALSHA
    size_t nkeys = 0;
    std::string bytes;         // argv (or keys then args), concatenated
    std::vector<size_t> lens;  // their lengths
    std::list<OpPtr>::iterator self;

    void keep(const std::string_view* a, size_t n, const std::string_view* b, size_t m) {
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
            total += a[i].size();
        }
        for (size_t i = 0; i < m; i++) {
            total += b[i].size();
        }
        bytes.reserve(total);
        lens.reserve(n + m);
        for (size_t i = 0; i < n; i++) {
            bytes.append(a[i].data(), a[i].size());
            lens.push_back(a[i].size());
        }
        for (size_t i = 0; i < m; i++) {
            bytes.append(b[i].data(), b[i].size());
            lens.push_back(b[i].size());
        }
    }
    std::vector<std::string_view> views() const {
        std::vector<std::string_view> v;
        v.reserve(lens.size());
        size_t at = 0;
        for (size_t len : lens) {
            v.emplace_back(bytes.data() + at, len);
            at += len;
        }
        return v;
    }
};

ClusterClient::ClusterClient(Loop& loop, ClusterConfig config, Logger logger)
    : loop_(loop), cfg_(std::move(config)), logger_(std::move(logger)) {
    if (cfg_.seeds.empty()) {
        throw std::invalid_argument("a Redis Cluster needs at least one seed node");
    }
    for (const Address& a : cfg_.seeds) {
        if (!a.valid() || a.is_unix()) {
            throw std::invalid_argument("invalid Redis Cluster seed \"" + a.to_string() + "\"");
        }
    }
    cfg_.node.cluster_node_ok = true;
    cfg_.node.sentinels.clear();
    cfg_.node.sentinel_query = false;
    deadline_timer_ = loop_.create_timer([this]() noexcept { on_deadline(); });
    defer_timer_ = loop_.create_timer([this]() noexcept { deliver(); });
    refresh_timer_ = loop_.create_timer([this]() noexcept { refresh(); });
    reap_timer_ = loop_.create_timer([this]() noexcept { reap(); });
    periodic_timer_ = loop_.create_timer([this]() noexcept { request_refresh(); });
}

ClusterClient::~ClusterClient() {
    closed_ = true;
    // Every caller hears Shutdown now; the nodes' own callbacks, run while they are destroyed
    // below, find their Op done.
    std::list<OpPtr> ops;
    ops.swap(ops_);
    waiting_.clear();
    for (OpPtr& op : ops) {
        op->done = true;
        Callback cb = std::move(op->cb);
        Result r;
        r.failure = Failure::Shutdown;
        r.unsent = !op->sent;
        invoke(cb, std::move(r));
    }
    nodes_.clear();
    retired_.clear();
}

void ClusterClient::log(LogLevel level, std::string_view message) const noexcept {
    if (!logger_) {
        return;
    }
    try {
        logger_(level, message);
    } catch (...) {
    }
}

// ---- the caller's commands ---------------------------------------------------------------

void ClusterClient::start() {
    if (!closed_ && slots_.empty() && !refreshing_) {
        request_refresh();
    }
}

void ClusterClient::command(const std::string_view* argv, size_t argc, Callback cb) {
    command_for_key(argc >= 2 ? argv[1] : std::string_view(), argv, argc, std::move(cb));
}

void ClusterClient::command_for_key(std::string_view key, const std::string_view* argv, size_t argc,
                                    Callback cb) {
    auto op = std::make_shared<Op>();
    op->cb = std::move(cb);
    op->slot = key_slot(key);
    bool invalid = argc < 2;
    if (!invalid) {
        op->keep(argv, argc, nullptr, 0);
    }
    submit(std::move(op));
    if (invalid) {
        fail_soon(ops_.back(), Failure::Invalid);
    }
}

void ClusterClient::evalsha(const Script& script, const std::string_view* keys, size_t nkeys,
                            const std::string_view* args, size_t nargs, Callback cb) {
    evalsha_until(0, script, keys, nkeys, args, nargs, std::move(cb));
}

void ClusterClient::evalsha_until(uint64_t deadline, const Script& script,
                                  const std::string_view* keys, size_t nkeys,
                                  const std::string_view* args, size_t nargs, Callback cb) {
    size_t known = scripts_.size();
    const Script& own = own_script(script);  // loaded by the nodes made from now on too
    if (scripts_.size() != known) {
        for (auto& n : nodes_) {
            n->client->add_script(own);  // SCRIPT LOAD now, before the EVALSHA below
        }
    }
    auto op = std::make_shared<Op>();
    op->cb = std::move(cb);
    op->script = &own;
    op->nkeys = nkeys;
    bool invalid = nkeys == 0;
    if (!invalid) {
        op->slot = key_slot(keys[0]);
        for (size_t i = 1; i < nkeys && !invalid; i++) {
            invalid = key_slot(keys[i]) != op->slot;
        }
    }
    if (!invalid) {
        op->keep(keys, nkeys, args, nargs);
    }
    submit(std::move(op), deadline);
    if (invalid) {
        fail_soon(ops_.back(), Failure::Invalid);
    }
}

void ClusterClient::evalsha(const Script& script, const EvalResp& call, Callback cb) {
    evalsha_until(0, script, call, std::move(cb));
}

void ClusterClient::evalsha_until(uint64_t deadline, const Script& script, const EvalResp& call,
                                  Callback cb) {
    std::vector<std::string_view> keys;
    std::vector<std::string_view> args;
    call.views(keys, args);
    evalsha_until(deadline, script, keys.data(), keys.size(), args.data(), args.size(),
                  std::move(cb));
}

// Queues `op` (may throw std::bad_alloc: then nothing is queued) and sends it unless it is
// refused at once (the caller fails it right after) or the client is closed. Its deadline:
// `deadline`, or (0) now + command_timeout_ms.
void ClusterClient::submit(OpPtr op, uint64_t deadline) {
    op->deadline = deadline != 0 ? deadline : loop_.now_ms() + cfg_.node.command_timeout_ms;
    ops_.push_back(op);
    op->self = std::prev(ops_.end());
    if (closed_) {
        fail_soon(op, Failure::Shutdown);
        return;
    }
    if (op->lens.empty()) {
        return;  // Invalid: failed by the caller
    }
    dispatch(op);
}

void ClusterClient::dispatch(const OpPtr& op) noexcept {
    Node* node = slots_.empty() ? nullptr : slots_[op->slot];
    if (node != nullptr) {
        send_to(*node, op, false);
        return;
    }
    if (slots_.empty() && refresh_failing_ && !refreshing_) {
        // No node answered the last question: fail fast, as a Client does in its backoff.
        request_refresh();
        fail_soon(op, Failure::Disconnected);
        return;
    }
    if (slots_.empty() || refreshing_) {
        try {
            waiting_.push_back(op);
            op->waiting = true;
        } catch (...) {
            fail_soon(op, Failure::Disconnected);
            return;
        }
        arm_deadline(op->deadline);
        request_refresh();
        return;
    }
    // A map that serves no one this slot: a node failed and no replica took over.
    request_refresh();
    fail_soon(op, Failure::Disconnected);
}

// The node's Client gets the Op's deadline (the original one, when it is sent again) and fails
// it at that deadline; a command sent again is not counted again in the metrics' commands.
// After ASK the node's Client sends ASKING right before the command (SendOptions::asking), in
// one write, again before a NOSCRIPT re-send of EVALSHA.
void ClusterClient::send_to(Node& node, const OpPtr& op, bool asking) noexcept {
    try {
        std::vector<std::string_view> v = op->views();
        Node* n = &node;
        Callback cb = [this, op, n](Result&& r) noexcept { on_result(op, n, std::move(r)); };
        SendOptions opts;
        opts.deadline = op->deadline;
        opts.resend = op->sent;
        opts.asking = asking;
        op->in_node = true;
        if (op->script != nullptr) {
            node.client->evalsha(*op->script, v.data(), op->nkeys, v.data() + op->nkeys,
                                 v.size() - op->nkeys, std::move(cb), opts);
        } else {
            node.client->command(v.data(), v.size(), std::move(cb), opts);
        }
        op->sent = true;
        op->asking = asking;
    } catch (...) {
        op->in_node = false;
        fail_soon(op, Failure::Disconnected);  // out of memory: nothing was queued
    }
}

void ClusterClient::on_result(const OpPtr& op, Node* node, Result&& r) noexcept {
    op->in_node = false;
    if (op->done || closed_) {
        return;
    }
    if (!r.ok()) {
        if (r.failure == Failure::Disconnected || r.failure == Failure::CircuitOpen) {
            request_refresh();  // the node may have failed over
        }
        finish(op, std::move(r));
        return;
    }
    if (r.reply.is_error() && !op->redirected && redirect(op, node, r.reply)) {
        return;
    }
    finish(op, std::move(r));
}

// MOVED or ASK followed: true. Anything else (or a redirection we cannot follow) is the
// caller's error reply.
bool ClusterClient::redirect(const OpPtr& op, Node* from, const Reply& reply) noexcept {
    bool moved = reply.is_error("MOVED");
    if (!moved && !reply.is_error("ASK")) {
        return false;
    }
    if (!moved && op->script != nullptr &&
        std::find(no_ask_.begin(), no_ask_.end(), op->script->sha()) != no_ask_.end()) {
        return false;  // dont_follow_ask()
    }
    uint16_t slot = 0;
    Address to;
    bool parsed = false;
    try {
        parsed = parse_redirect(reply.str, from->address, slot, to);
    } catch (...) {
    }
    if (!parsed) {
        log(LogLevel::Warn,
            cat("redis cluster: cannot follow \"", printable(reply.str), "\" from ", from->name));
        return false;
    }
    Node* target = node_for(to, moved);
    if (target == nullptr) {
        return false;
    }
    op->redirected = true;
    if (moved) {
        stats_.moved++;
        if (!slots_.empty()) {
            slots_[slot] = target;
        }
        log(LogLevel::Debug, cat("redis cluster: slot ", slot, " moved to ", target->name));
        request_refresh();
    } else {
        stats_.asked++;
    }
    send_to(*target, op, !moved);
    return true;
}

void ClusterClient::finish(const OpPtr& op, Result&& r) noexcept {
    if (op->done) {
        return;
    }
    op->done = true;
    if (op->deferred != Failure::None) {
        deferred_--;
    }
    ops_.erase(op->self);
    Callback cb = std::move(op->cb);
    invoke(cb, std::move(r));
}

void ClusterClient::fail_soon(const OpPtr& op, Failure why) noexcept {
    if (op->done || op->deferred != Failure::None) {
        return;
    }
    op->deferred = why;
    deferred_++;
    if (!defer_timer_->active()) {
        defer_timer_->start(0);
    }
}

void ClusterClient::deliver() noexcept {
    // Callbacks may issue commands (appended to ops_) and fail them: those wait for the next
    // run of the timer, which fail_soon() arms again.
    std::vector<OpPtr> due;
    try {
        due.reserve(deferred_);
    } catch (...) {
    }
    for (auto it = ops_.begin(); it != ops_.end() && due.size() < deferred_;) {
        const OpPtr& op = *it++;
        if (op->deferred != Failure::None) {
            try {
                due.push_back(op);
            } catch (...) {
                defer_timer_->start(1);  // memory: the rest next time
                break;
            }
        }
    }
    for (const OpPtr& op : due) {
        Result r;
        r.failure = op->deferred;
        r.unsent = !op->sent;
        finish(op, std::move(r));
    }
}

// The deadline of the Ops waiting for the slot map (those in a node are the node's Client's).
void ClusterClient::arm_deadline(uint64_t at) noexcept {
    if (deadline_timer_->active() && armed_deadline_ <= at) {
        return;
    }
    uint64_t now = loop_.now_ms();
    armed_deadline_ = at;
    deadline_timer_->start(at > now ? at - now : 0);
}

void ClusterClient::on_deadline() noexcept {
    uint64_t now = loop_.now_ms();
    uint64_t next = 0;
    std::vector<OpPtr> due;
    for (const OpPtr& op : waiting_) {
        if (op->done || op->in_node) {
            continue;
        }
        if (op->deadline > now) {
            next = next == 0 ? op->deadline : std::min(next, op->deadline);
            continue;
        }
        try {
            due.push_back(op);
        } catch (...) {
            next = now + 1;  // memory: the rest next time
        }
    }
    for (const OpPtr& op : due) {
        Result r;
        r.failure = op->deferred != Failure::None ? op->deferred : Failure::Timeout;
        r.unsent = !op->sent;
        finish(op, std::move(r));  // done: skipped when waiting_ is dispatched
    }
    if (next != 0) {
        arm_deadline(next);
    }
}

// ---- nodes -------------------------------------------------------------------------------

ClusterClient::Node* ClusterClient::find_node(const Address& address) const noexcept {
    for (const auto& n : nodes_) {
        if (n->address.host == address.host && n->address.port == address.port) {
            return n.get();
        }
    }
    return nullptr;
}

// The node at `address`, made (with its Client) if there is none.
ClusterClient::Node* ClusterClient::node_for(const Address& address, bool master) noexcept {
    if (Node* n = find_node(address)) {
        n->master = n->master || master;
        return n;
    }
    try {
        auto node = std::make_unique<Node>();
        node->address = address;
        node->name = address.to_string();
        node->master = master;
        Config c = cfg_.node;
        c.address = address;
        node->client = std::make_unique<Client>(loop_, std::move(c), logger_);
        for (const auto& s : scripts_) {
            node->client->add_script(*s);
        }
        node->client->require(checks_);
        node->client->set_metrics(metrics_, gauge_);
        nodes_.push_back(std::move(node));
        stats_.nodes_created++;
        return nodes_.back().get();
    } catch (...) {
        log(LogLevel::Error, cat("redis cluster: cannot make a client for ", address.to_string()));
        return nullptr;
    }
}

void ClusterClient::retire(std::unique_ptr<Node> node) noexcept {
    stats_.nodes_retired++;
    try {
        retired_.push_back(std::move(node));
    } catch (...) {
        return;  // memory: destroyed here, its callbacks find their Ops done or fail them
    }
    if (!reap_timer_->active()) {
        reap_timer_->start(cfg_.node.command_timeout_ms);
    }
}

// Destroys the retired nodes nothing is pending on (from a timer: never inside their own
// callbacks).
void ClusterClient::reap() noexcept {
    // Out of retired_ first: a Client delivers what it still holds (Shutdown) as it is
    // destroyed, and those callbacks may reach this object again.
    std::vector<std::unique_ptr<Node>> idle;
    for (size_t i = 0; i < retired_.size();) {
        if (retired_[i]->client->pending() == 0) {
            try {
                idle.push_back(std::move(retired_[i]));
            } catch (...) {
                break;  // memory: the next time
            }
            retired_.erase(retired_.begin() + long(i));
        } else {
            i++;
        }
    }
    idle.clear();
    if (!retired_.empty() && !reap_timer_->active()) {
        reap_timer_->start(cfg_.node.command_timeout_ms);
    }
}

// ---- the slot map --------------------------------------------------------------------------

void ClusterClient::request_refresh() noexcept {
    if (closed_) {
        return;
    }
    if (refreshing_) {
        refresh_again_ = true;
        return;
    }
    if (refresh_timer_->active()) {
        return;
    }
    uint64_t now = loop_.now_ms();
    uint64_t next = refreshed_once_ ? last_refresh_ms_ + cfg_.refresh_interval_ms : now;
    refresh_timer_->start(next > now ? next - now : 0);
}

void ClusterClient::refresh() noexcept {
    if (closed_ || refreshing_) {
        return;
    }
    refreshing_ = true;
    refresh_again_ = false;
    refreshed_once_ = true;
    last_refresh_ms_ = loop_.now_ms();
    refresh_gen_++;
    candidate_ = 0;
    refresh_errors_.clear();
    candidates_.clear();
    try {
        // Masters whose Client is available first, then the other masters, then the seeds.
        for (int pass = 0; pass < 2; pass++) {
            for (const auto& n : nodes_) {
                if (n->master && n->client->available() == (pass == 0)) {
                    candidates_.push_back(n->address);
                }
            }
        }
        for (const Address& seed : cfg_.seeds) {
            bool known = std::any_of(candidates_.begin(), candidates_.end(), [&](const Address& a) {
                return a.host == seed.host && a.port == seed.port;
            });
            if (!known) {
                candidates_.push_back(seed);
            }
        }
    } catch (...) {
    }
    ask_next();
}

void ClusterClient::ask_next() noexcept {
    while (candidate_ < candidates_.size()) {
        Address a = candidates_[candidate_++];
        Node* node = node_for(a, false);
        if (node == nullptr) {
            continue;
        }
        uint64_t gen = refresh_gen_;
        try {
            SendOptions internal;
            internal.internal = true;
            node->client->command(
                {"CLUSTER", "SLOTS"},
                [this, gen, node](Result&& r) noexcept { slots_answer(gen, node, std::move(r)); },
                internal);
            return;
        } catch (...) {
            continue;
        }
    }
    refresh_failed();
}

void ClusterClient::slots_answer(uint64_t gen, Node* asked, Result&& r) noexcept {
    if (closed_ || gen != refresh_gen_ || !refreshing_) {
        return;
    }
    std::string why;
    if (!r.ok()) {
        why = to_string(r.failure);
    } else if (r.reply.is_error()) {
        why = printable(r.reply.str);
    } else if (!apply_slots(*asked, r.reply)) {
        why = "no valid slot map";
    }
    if (!why.empty()) {
        refresh_errors_ += cat(refresh_errors_.empty() ? "" : ", ", asked->name, ": ", why);
        ask_next();
        return;
    }
    refreshing_ = false;
    stats_.refreshes++;
    if (cfg_.refresh_every_ms != 0) {
        periodic_timer_->start(cfg_.refresh_every_ms);
    }
    if (refresh_failing_) {
        refresh_failing_ = false;
        log(LogLevel::Info, cat("redis cluster: slot map restored, from ", asked->name));
    }
    dispatch_waiting();
    if (refresh_again_) {
        refresh_again_ = false;
        request_refresh();
    }
}

// CLUSTER SLOTS: [[start, end, [host, port, id, ...], replicas...], ...]. Applied when every
// range is valid and some slot is served; the masters get a node, the other nodes are retired.
bool ClusterClient::apply_slots(const Node& asked, const Reply& reply) noexcept {
    if (reply.type != Reply::Type::Array || reply.elements.empty()) {
        return false;
    }
    struct Range {
        uint16_t first, last;
        Address master;
    };
    std::vector<Range> ranges;
    try {
        for (const Reply& e : reply.elements) {
            if (e.type != Reply::Type::Array || e.elements.size() < 3 ||
                e.elements[0].type != Reply::Type::Integer ||
                e.elements[1].type != Reply::Type::Integer ||
                e.elements[2].type != Reply::Type::Array || e.elements[2].elements.size() < 2) {
                return false;
            }
            const Reply& m = e.elements[2];
            long long first = e.elements[0].integer, last = e.elements[1].integer;
            if (first < 0 || last < first || last >= kClusterSlots ||
                m.elements[0].type != Reply::Type::String ||
                m.elements[1].type != Reply::Type::Integer || m.elements[1].integer <= 0 ||
                m.elements[1].integer > 65535) {
                return false;
            }
            Range range{uint16_t(first), uint16_t(last), Address()};
            const std::string& host = m.elements[0].str;
            range.master.host = host.empty() || host == "?" ? asked.address.host : host;
            range.master.port = uint16_t(m.elements[1].integer);
            if (!range.master.valid()) {
                return false;
            }
            ranges.push_back(std::move(range));
        }
        std::vector<Node*> owners;
        owners.reserve(ranges.size());
        // retire() must not fail: it may retire the node whose callback this is.
        retired_.reserve(retired_.size() + nodes_.size() + ranges.size());
        for (const Range& range : ranges) {
            Node* n = node_for(range.master, false);
            if (n == nullptr) {
                return false;
            }
            owners.push_back(n);
        }
        std::vector<Node*> slots(kClusterSlots, nullptr);
        std::vector<Node*> were_masters;
        for (auto& n : nodes_) {
            if (n->master) {
                were_masters.push_back(n.get());
            }
        }
        for (auto& n : nodes_) {
            n->master = false;
        }
        for (size_t i = 0; i < ranges.size(); i++) {
            owners[i]->master = true;
            std::fill(slots.begin() + ranges[i].first, slots.begin() + ranges[i].last + 1,
                      owners[i]);
        }
        bool first_map = slots_.empty();
        size_t before = nodes_.size();
        slots_.swap(slots);
        for (size_t i = 0; i < nodes_.size();) {
            if (!nodes_[i]->master) {
                if (std::find(were_masters.begin(), were_masters.end(), nodes_[i].get()) !=
                    were_masters.end()) {
                    log(LogLevel::Info,
                        cat("redis cluster: ", nodes_[i]->name, " left the slot map"));
                }
                retire(std::move(nodes_[i]));
                nodes_.erase(nodes_.begin() + long(i));
            } else {
                i++;
            }
        }
        if (first_map || nodes_.size() != before) {
            log(LogLevel::Info, cat("redis cluster: slot map from ", asked.name, ": ",
                                    nodes_.size(), " masters, ", ranges.size(), " slot ranges"));
        }
        return true;
    } catch (...) {
        return false;
    }
}

void ClusterClient::refresh_failed() noexcept {
    refreshing_ = false;
    stats_.refresh_failures++;
    if (!refresh_failing_) {
        refresh_failing_ = true;
        log(LogLevel::Error,
            cat("redis cluster: no node answered CLUSTER SLOTS (", refresh_errors_, ")"));
    } else {
        log(LogLevel::Debug,
            cat("redis cluster: no node answered CLUSTER SLOTS (", refresh_errors_, ")"));
    }
    // Commands waiting for a first map fail; with a map, they go by the one we have.
    std::vector<OpPtr> waiting;
    waiting.swap(waiting_);
    for (const OpPtr& op : waiting) {
        op->waiting = false;
        if (!op->done) {
            if (slots_.empty()) {
                fail_soon(op, Failure::Disconnected);
            } else {
                dispatch(op);
            }
        }
    }
    if (refresh_again_) {
        refresh_again_ = false;
        request_refresh();
    }
}

void ClusterClient::dispatch_waiting() noexcept {
    std::vector<OpPtr> waiting;
    waiting.swap(waiting_);
    for (const OpPtr& op : waiting) {
        op->waiting = false;
        if (!op->done) {
            dispatch(op);
        }
    }
}

// ---- the rest of Client's surface -----------------------------------------------------------

// Our copy of `script` (kept for the nodes made later, and for a command sent again).
const Script& ClusterClient::own_script(const Script& script) {
    for (const auto& s : scripts_) {
        if (s->sha() == script.sha()) {
            return *s;
        }
    }
    scripts_.push_back(std::make_unique<Script>(script));
    return *scripts_.back();
}

void ClusterClient::dont_follow_ask(const Script& script) {
    no_ask_.emplace_back(script.sha());
}

void ClusterClient::add_script(const Script& script) {
    own_script(script);
    for (auto& n : nodes_) {
        n->client->add_script(script);
    }
}

void ClusterClient::add_script(const Script& script, std::string_view key,
                               std::string_view channel) {
    add_script(script);
    require(permission_checks(script.source(), key, channel));
}

void ClusterClient::require(const std::vector<Argv>& checks) {
    for (const Argv& argv : checks) {
        if (std::find(checks_.begin(), checks_.end(), argv) == checks_.end()) {
            checks_.push_back(argv);
        }
    }
    for (auto& n : nodes_) {
        n->client->require(checks);
    }
}

void ClusterClient::reply_unusable(std::string_view key, const Result& result,
                                   std::string_view what) noexcept {
    if (Client* c = client_of_slot(key_slot(key))) {
        c->reply_unusable(result, what);
    }
}

void ClusterClient::close() noexcept {
    if (closed_) {
        return;
    }
    closed_ = true;
    for (const OpPtr& op : ops_) {
        fail_soon(op, Failure::Shutdown);
    }
    waiting_.clear();
    refresh_timer_->stop();
    periodic_timer_->stop();
    refreshing_ = false;
    for (auto& n : nodes_) {
        n->client->close();
    }
    for (auto& n : retired_) {
        n->client->close();
    }
}

bool ClusterClient::disconnect_idle() noexcept {
    bool none = true;
    for (auto& n : nodes_) {
        none = n->client->disconnect_idle() && none;
    }
    for (auto& n : retired_) {
        none = n->client->disconnect_idle() && none;
    }
    return none && ops_.empty();
}

bool ClusterClient::available() const noexcept {
    if (closed_) {
        return false;
    }
    if (slots_.empty()) {
        return !refresh_failing_;
    }
    return std::any_of(nodes_.begin(), nodes_.end(),
                       [](const auto& n) { return n->master && n->client->available(); });
}

bool ClusterClient::available(std::string_view key) const noexcept {
    if (closed_) {
        return false;
    }
    if (slots_.empty()) {
        return !refresh_failing_;
    }
    Node* n = slots_[key_slot(key)];
    return n != nullptr && n->client->available();
}

size_t ClusterClient::pending() const noexcept {
    return ops_.size() - deferred_;
}

size_t ClusterClient::abandoned(std::string_view key) const noexcept {
    const Client* c = client_of_slot(key_slot(key));
    return c != nullptr ? c->abandoned() : 0;
}

size_t ClusterClient::abandoned() const noexcept {
    size_t n = 0;
    for (const auto& node : nodes_) {
        n += node->client->abandoned();
    }
    return n;
}

void ClusterClient::set_metrics(core::metrics::RedisMetrics* metrics,
                                core::metrics::WorkerGauge* gauge) noexcept {
    metrics_ = metrics;
    gauge_ = gauge;
    for (auto& n : nodes_) {
        n->client->set_metrics(metrics, gauge);
    }
    for (auto& n : retired_) {
        n->client->set_metrics(metrics, gauge);
    }
}

std::string ClusterClient::node_of_slot(uint16_t slot) const {
    if (slots_.empty() || slot >= kClusterSlots || slots_[slot] == nullptr) {
        return std::string();
    }
    return slots_[slot]->name;
}

Client* ClusterClient::client_of_slot(uint16_t slot) const noexcept {
    if (slots_.empty() || slot >= kClusterSlots || slots_[slot] == nullptr) {
        return nullptr;
    }
    return slots_[slot]->client.get();
}

size_t ClusterClient::masters() const noexcept {
    return size_t(
        std::count_if(nodes_.begin(), nodes_.end(), [](const auto& n) { return n->master; }));
}

}  // namespace throttle::redis
