// throttle_secret STRING | file=PATH;   (alias: throttle_cache_secret)            http
// The deployment's one secret: zones key every client key with it (core/zone_key.hpp) and the
// cache its identities (core/cache_key.hpp), so no client value reaches shared memory or Redis
// in the clear. Every host sharing a Redis must have the same one.
#include "core/zone_key.hpp"
#include "ngx/conf.hpp"
#include "ngx/directive_args.hpp"

namespace throttle::ngx {
namespace {

constexpr size_t secret_file_max = 4096;

// The file's bytes, without one trailing "\n" or "\r\n". False (logged) when it cannot be read
// or is too large.
bool read_secret_file(ngx_conf_t* cf, const ngx_str_t& directive, ngx_str_t path,
                      ngx_str_t& out) noexcept {
    if (path.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid file \"\" in \"%V\"", &directive);
        return false;
    }
    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return false;
    }
    auto* buf = static_cast<u_char*>(ngx_pnalloc(cf->pool, secret_file_max + 1));
    ssize_t n = buf != nullptr ? read_conf_file(cf, "secret file", path, buf, secret_file_max) : -1;
    if (n < 0) {
        return false;
    }
    size_t len = static_cast<size_t>(n);
    if (len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r') {
            len--;
        }
    }
    out = {len, buf};
    return true;
}

}  // namespace

char* throttle_secret_directive(ngx_conf_t* cf, ngx_command_t* cmd, void*) noexcept {
    MainConf* mcf = main_conf(cf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (mcf->cache.secret.data != nullptr) {
        if (mcf->secret_directive != nullptr && mcf->secret_directive != &cmd->name) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" is duplicate: \"%V\" already set the secret (one name "
                               "for the other)",
                               &cmd->name, mcf->secret_directive);
            return conf_error();
        }
        return const_cast<char*>("is duplicate");
    }
    ngx_str_t secret = value[1];
    if (starts_with(value[1], "file=")) {
        ngx_str_t path{value[1].len - 5, value[1].data + 5};
        if (!read_secret_file(cf, cmd->name, path, secret)) {
            return conf_error();
        }
    }
    if (secret.len < core::secret_min_len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must be at least %uz bytes long",
                           &cmd->name, core::secret_min_len);
        return conf_error();
    }
    mcf->cache.secret = secret;
    mcf->secret_directive = &cmd->name;
    return NGX_CONF_OK;
}

}  // namespace throttle::ngx
