#include "core/cache_vary.hpp"

#include <cstring>

#include "core/http_text.hpp"

namespace throttle::core::cache {

namespace {

constexpr char variant_label[] = "throttle-cache-variant";  // with its NUL
constexpr uint8_t variant_version = 1;
constexpr std::string_view record_magic("TCV\x01", 4);

}  // namespace

VaryList::Add VaryList::add(std::string_view name) noexcept {
    if (!http::is_token(name) || name.size() > vary_max_name) return Add::bad_name;
    char low[vary_max_name];
    for (size_t i = 0; i < name.size(); ++i) low[i] = http::lower(name[i]);
    std::string_view n(low, name.size());
    size_t at = 0;
    while (at < count_ && this->name(at) < n) ++at;
    if (at < count_ && this->name(at) == n) return Add::ok;  // a repeat
    if (count_ == vary_max_headers) return Add::too_many;
    for (size_t i = count_; i > at; --i) {
        std::memcpy(names_[i], names_[i - 1], lens_[i - 1]);
        lens_[i] = lens_[i - 1];
    }
    std::memcpy(names_[at], low, n.size());
    lens_[at] = static_cast<uint8_t>(n.size());
    ++count_;
    rebuild();
    return Add::ok;
}

void VaryList::rebuild() noexcept {
    text_len_ = 0;
    for (size_t i = 0; i < count_; ++i) {
        if (i > 0) text_[text_len_++] = ',';
        std::memcpy(text_ + text_len_, names_[i], lens_[i]);
        text_len_ += lens_[i];
    }
}

bool VaryList::parse(std::string_view text, VaryList& out) noexcept {
    out = VaryList();
    if (text.empty() || text.size() > vary_list_max) return false;
    while (true) {
        size_t comma = text.find(',');
        std::string_view n = text.substr(0, comma);
        for (char c : n)
            if (c != http::lower(c)) return false;
        // Sorted and unique: each name above the one before it.
        if (out.count_ > 0 && !(out.name(out.count_ - 1) < n)) return false;
        if (out.add(n) != Add::ok) return false;
        if (comma == std::string_view::npos) break;
        text.remove_prefix(comma + 1);
    }
    return true;
}

bool append_vary_value(std::string_view line, VaryValue& v) {
    bool first = !v.present;
    v.present = true;
    while (true) {
        size_t comma = line.find(',');
        if (!first) v.value.push_back(',');
        first = false;
        v.value.append(http::trim(line.substr(0, comma)));
        if (v.value.size() > vary_max_value) return false;
        if (comma == std::string_view::npos) break;
        line.remove_prefix(comma + 1);
    }
    return true;
}

Sha256Digest variant_key(const Sha256Digest& base, const VaryList& list, const VaryValue* values) {
    Sha256 h;
    h.update(variant_label, sizeof(variant_label));
    h.update(&variant_version, 1);
    h.update(base.data(), base.size());
    h.put_field(list.text());
    h.put_u64(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
        uint8_t present = values[i].present ? 1 : 0;
        h.update(&present, 1);
        h.put_field(values[i].present ? std::string_view(values[i].value) : std::string_view());
    }
    return h.finish();
}

std::string encode_vary_record(const VaryList& list) {
    std::string s;
    s.reserve(record_magic.size() + list.text().size());
    s.append(record_magic);
    s.append(list.text());
    return s;
}

bool is_vary_record(std::string_view bytes) noexcept {
    return bytes.substr(0, record_magic.size()) == record_magic;
}

bool decode_vary_record(std::string_view bytes, VaryList& out) noexcept {
    return is_vary_record(bytes) && VaryList::parse(bytes.substr(record_magic.size()), out);
}

}  // namespace throttle::core::cache
