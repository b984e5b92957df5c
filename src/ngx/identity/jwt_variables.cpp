// $throttle_jwt_status and $throttle_jwt_claim_NAME: the token of the request verified by the
// location's throttle_jwt, once per request (a memo in the request's pool), through the
// per-worker cache of verified tokens.
#include <memory>
#include <new>
#include <string_view>

#include "core/http_text.hpp"
#include "ngx/conf.hpp"
#include "ngx/identity/jwt_conf.hpp"

namespace throttle::ngx {
namespace {

namespace jwt = core::jwt;

// One per (client request, throttle_jwt): a pool cleanup entry, found again by its handler.
// Subrequests and internal redirects share the pool and the request headers, so they share it.
struct Memo {
    const JwtConf* conf;
    jwt::Status status;
    std::shared_ptr<const jwt::Result> result;  // when valid
};

void memo_cleanup(void* data) noexcept {
    static_cast<Memo*>(data)->~Memo();
}

// The token as the location's throttle_jwt reads it; empty when there is none.
std::string_view find_token(ngx_http_request_t* r, const JwtConf& conf) noexcept {
    if (conf.authorization) {
        ngx_table_elt_t* h = r->headers_in.authorization;
        return h == nullptr ? std::string_view() : jwt::bearer_token(view(h->value), true);
    }
    ngx_list_part_t* part = &r->headers_in.headers.part;
    auto* h = static_cast<ngx_table_elt_t*>(part->elts);
    std::string_view want = conf.cookie ? std::string_view("cookie") : conf.name;
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) {
                return {};
            }
            part = part->next;
            h = static_cast<ngx_table_elt_t*>(part->elts);
            i = 0;
            if (part->nelts == 0) {
                continue;
            }
        }
        if (h[i].hash == 0 || !core::http::iequals(view(h[i].key), want)) {
            continue;
        }
        if (!conf.cookie) {
            return jwt::bearer_token(view(h[i].value), false);
        }
        std::string_view v = jwt::cookie_value(view(h[i].value), conf.name);
        if (!v.empty()) {
            return v;
        }
    }
}

// The memo of r for its location's throttle_jwt, verifying the token on first use; nullptr
// without throttle_jwt (or on an allocation failure, logged).
const Memo* verified(ngx_http_request_t* r) noexcept {
    auto* conf = const_cast<JwtConf*>(loc_conf(r)->jwt);
    if (conf == nullptr) {
        return nullptr;
    }
    for (ngx_pool_cleanup_t* c = r->pool->cleanup; c != nullptr; c = c->next) {
        if (c->handler == memo_cleanup && static_cast<Memo*>(c->data)->conf == conf) {
            return static_cast<Memo*>(c->data);
        }
    }
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, sizeof(Memo));
    if (cln == nullptr) {
        return nullptr;
    }
    auto* memo = new (cln->data) Memo{conf, jwt::Status::missing, nullptr};
    cln->handler = memo_cleanup;
    std::string_view token = find_token(r, *conf);
    if (token.empty()) {
        return memo;
    }
    try {
        auto now = static_cast<int64_t>(ngx_time());
        std::shared_ptr<const jwt::Result> res = conf->cache.find(token, now);
        if (res == nullptr) {
            auto fresh = std::make_shared<jwt::Result>(conf->verifier.verify(token, now));
            res = fresh;
            conf->cache.store(token, res, now, conf->verifier.policy().leeway_s);
        }
        memo->status = res->status;
        if (res->status == jwt::Status::valid) {
            memo->result = std::move(res);
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "throttle_jwt: %s", e.what());
        memo->status = jwt::Status::malformed;
    }
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0, "throttle_jwt: %s",
                   jwt::status_name(memo->status).data());
    return memo;
}

ngx_int_t set_value(ngx_http_variable_value_t* v, std::string_view s) noexcept {
    v->len = s.size();
    v->data = reinterpret_cast<u_char*>(const_cast<char*>(s.data()));
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    return NGX_OK;
}

ngx_int_t not_found(ngx_http_variable_value_t* v) noexcept {
    v->not_found = 1;
    return NGX_OK;
}

ngx_int_t status_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) noexcept {
    const Memo* m = verified(r);
    if (m == nullptr) {
        return not_found(v);
    }
    return set_value(v, jwt::status_name(m->status));
}

constexpr std::string_view claim_prefix = "throttle_jwt_claim_";

// A claim by the variable's name after the prefix; nginx lowercases variable names, so claims
// match ASCII case-insensitively (the first such claim in the payload).
ngx_int_t claim_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                         uintptr_t data) noexcept {
    const Memo* m = verified(r);
    if (m == nullptr || m->result == nullptr) {
        return not_found(v);
    }
    std::string_view name = view(*reinterpret_cast<ngx_str_t*>(data));
    name.remove_prefix(claim_prefix.size());
    for (const auto& c : m->result->claims) {
        if (core::http::iequals(c.first, name)) {
            return set_value(v, c.second);
        }
    }
    return not_found(v);
}

}  // namespace

ngx_int_t add_jwt_variables(ngx_conf_t* cf) noexcept {
    ngx_str_t status = ngx_string("throttle_jwt_status");
    ngx_http_variable_t* var = ngx_http_add_variable(cf, &status, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == nullptr) {
        return NGX_ERROR;
    }
    var->get_handler = status_variable;
    ngx_str_t prefix = {claim_prefix.size(),
                        reinterpret_cast<u_char*>(const_cast<char*>(claim_prefix.data()))};
    var = ngx_http_add_variable(cf, &prefix, NGX_HTTP_VAR_NOCACHEABLE | NGX_HTTP_VAR_PREFIX);
    if (var == nullptr) {
        return NGX_ERROR;
    }
    var->get_handler = claim_variable;
    return NGX_OK;
}

}  // namespace throttle::ngx
