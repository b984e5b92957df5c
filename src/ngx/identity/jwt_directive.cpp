// throttle_jwt off | key=hs:file:PATH | key=hs:env:NAME | key=pem:PATH | jwks=PATH
//              [header=NAME | cookie=NAME] [alg=LIST] [leeway=TIME] [iss=STR] [aud=STR]
//              [cache=N];                                           http, server, location
// Keys and secrets are read here, at configuration time; anything wrong fails `nginx -t`.
#include <cstdlib>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>

#include "core/http_text.hpp"
#include "ngx/conf.hpp"
#include "ngx/directive_args.hpp"
#include "ngx/identity/jwt_conf.hpp"

namespace throttle::ngx {
namespace {

namespace jwt = core::jwt;

constexpr size_t min_secret_len = 32;  // RFC 7518 3.2: at least the hash's size (HS256)
constexpr size_t max_key_file = 1 << 20;

void destroy_conf(void* data) noexcept {
    delete static_cast<JwtConf*>(data);
}

// The whole file at PATH (relative to the prefix), at most max_key_file bytes. Logs and returns
// false when it cannot be read.
bool read_key_file(ngx_conf_t* cf, const Param& p, std::string_view path_text, std::string& out) {
    ngx_str_t path{path_text.size(),
                   reinterpret_cast<u_char*>(const_cast<char*>(path_text.data()))};
    if (path.len == 0 || ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        invalid(cf, p, "key file");
        return false;
    }
    out.assign(max_key_file + 1, '\0');
    ssize_t n =
        read_conf_file(cf, "key file", path, reinterpret_cast<u_char*>(out.data()), max_key_file);
    if (n < 0) {
        return false;
    }
    out.resize(static_cast<size_t>(n));
    return true;
}

// A secret's bytes: trailing CR/LF (an editor's final newline) are not part of it.
bool check_secret(ngx_conf_t* cf, const Param& p, std::string& secret) {
    while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) {
        secret.pop_back();
    }
    if (secret.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "empty secret in \"%V\"", p.arg);
        return false;
    }
    if (secret.size() < min_secret_len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "secret in \"%V\" is too short: %uz bytes, at least %uz", p.arg,
                           secret.size(), min_secret_len);
        return false;
    }
    return true;
}

bool parse_key(ngx_conf_t* cf, const Param& p, std::optional<jwt::KeySet>& keys) {
    std::string_view v = p.text();
    std::string text;
    try {
        if (p.name == "jwks") {
            if (!read_key_file(cf, p, v, text)) {
                return false;
            }
            keys = jwt::KeySet::jwks(text);
        } else if (v.substr(0, 8) == "hs:file:") {
            if (!read_key_file(cf, p, v.substr(8), text) || !check_secret(cf, p, text)) {
                return false;
            }
            keys = jwt::KeySet(jwt::Key::hmac(std::move(text)));
        } else if (v.substr(0, 7) == "hs:env:") {
            std::string name(v.substr(7));
            const char* value = name.empty() ? nullptr : getenv(name.c_str());
            if (value == nullptr) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "environment variable in \"%V\" is not set (and \"env %s;\" "
                                   "keeps it across a binary upgrade)",
                                   p.arg, name.empty() ? "NAME" : name.c_str());
                return false;
            }
            text = value;
            if (!check_secret(cf, p, text)) {
                return false;
            }
            keys = jwt::KeySet(jwt::Key::hmac(std::move(text)));
        } else if (v.substr(0, 4) == "pem:") {
            if (!read_key_file(cf, p, v.substr(4), text)) {
                return false;
            }
            keys = jwt::KeySet(jwt::Key::pem(text));
        } else {
            return invalid(cf, p, "key", ": \"hs:file:PATH\", \"hs:env:NAME\" or \"pem:PATH\"");
        }
    } catch (const std::runtime_error& e) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid %s \"%V\": %s",
                           p.name == "jwks" ? "jwks" : "key", p.arg, e.what());
        return false;
    }
    return true;
}

bool parse_algs(ngx_conf_t* cf, const Param& p, unsigned& algs) {
    algs = 0;
    std::string_view v = p.text();
    for (;;) {
        size_t comma = v.find(',');
        std::optional<jwt::Alg> a = jwt::alg_from_name(v.substr(0, comma));
        if (!a) {
            return invalid(cf, p, "alg", ": HS256, HS384, HS512, RS256 or ES256");
        }
        algs |= jwt::alg_bit(*a);
        if (comma == std::string_view::npos) {
            return true;
        }
        v.remove_prefix(comma + 1);
    }
}

char* parse(ngx_conf_t* cf, JwtConf*& out) {
    std::optional<jwt::KeySet> keys;
    jwt::Policy policy;
    const Param* algs_param = nullptr;
    Param algs_copy;
    bool cookie = false;
    bool have_source = false;
    std::string name = "authorization";
    size_t cache_entries = default_jwt_cache_entries;
    Params params(cf, 1);
    Param p;
    while (params.next(p)) {
        if (p.name == "key" || p.name == "jwks") {
            if (keys) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"key\" and \"jwks\" are exclusive");
                return conf_error();
            }
            if (!parse_key(cf, p, keys)) {
                return conf_error();
            }
        } else if (p.name == "header" || p.name == "cookie") {
            if (have_source) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"header\" and \"cookie\" are exclusive");
                return conf_error();
            }
            have_source = true;
            cookie = p.name == "cookie";
            if (cookie ? !core::http::is_token(p.text()) : !valid_header_name(p.value)) {
                invalid(cf, p, cookie ? "cookie name" : "header name");
                return conf_error();
            }
            name.assign(p.text());
            for (char& c : name) {
                c = core::http::lower(c);
            }
        } else if (p.name == "alg") {
            if (!parse_algs(cf, p, policy.algs)) {
                return conf_error();
            }
            algs_copy = p;
            algs_param = &algs_copy;
        } else if (p.name == "leeway") {
            ngx_msec_t ms = 0;
            if (!parse_msec(cf, p, 0, 86400000, "leeway", ms)) {
                return conf_error();
            }
            policy.leeway_s = static_cast<int64_t>(ms / 1000);
        } else if (p.name == "iss" || p.name == "aud") {
            if (p.value.len == 0) {
                invalid(cf, p, p.name == "iss" ? "iss" : "aud");
                return conf_error();
            }
            (p.name == "iss" ? policy.iss : policy.aud) = std::string(p.text());
        } else if (p.name == "cache") {
            ngx_int_t n = 0;
            if (!parse_number(cf, p, 0, 1000000, "cache", n)) {
                return conf_error();
            }
            cache_entries = static_cast<size_t>(n);
        } else {
            return params.unknown(p);
        }
    }
    if (params.failed()) {
        return conf_error();
    }
    if (!keys) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"throttle_jwt\" must have \"key\" or \"jwks\" parameter");
        return conf_error();
    }
    if (algs_param != nullptr) {
        unsigned extra = policy.algs & ~keys->algs();
        for (jwt::Alg a : {jwt::Alg::HS256, jwt::Alg::HS384, jwt::Alg::HS512, jwt::Alg::RS256,
                           jwt::Alg::ES256}) {
            if ((extra & jwt::alg_bit(a)) != 0) {
                std::string_view n = jwt::alg_name(a);
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": the key cannot verify \"%*s\"",
                                   algs_param->arg, n.size(), n.data());
                return conf_error();
            }
        }
    }
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == nullptr) {
        return conf_error();
    }
    auto* conf = new JwtConf(std::move(*keys), std::move(policy), cache_entries);
    cln->handler = destroy_conf;
    cln->data = conf;
    conf->cookie = cookie;
    conf->authorization = !cookie && name == "authorization";
    conf->name = std::move(name);
    out = conf;
    return NGX_CONF_OK;
}

}  // namespace

char* throttle_jwt_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->jwt != NGX_CONF_UNSET_PTR) {
        return const_cast<char*>("is duplicate");
    }
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (cf->args->nelts == 2 && is_off(value[1])) {
        lcf->jwt = nullptr;
        return NGX_CONF_OK;
    }
    try {
        JwtConf* jc = nullptr;
        char* rv = parse(cf, jc);
        if (rv == NGX_CONF_OK) {
            lcf->jwt = jc;
        }
        return rv;
    } catch (const std::exception& e) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "throttle_jwt: %s", e.what());
        return conf_error();
    }
}

}  // namespace throttle::ngx
